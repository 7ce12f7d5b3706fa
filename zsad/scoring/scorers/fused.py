"""`diffpath_fused`, zsad's recommended detector (docs/method.md §3.4): DiffPath-6D's and DiffPathV2's
features side by side (12-D, one detector); the two methods fail on different pairs. Its V2 half defaults to
the plain Stein score error (`weighting: none`), the reading with the best evidence in `zsad ablate`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional, Sequence

import numpy as np
import torch

from zsad.diffusion.backbone import Backbone
from zsad.errors import ConfigError
from zsad.scoring.scorers.base import Scorer
from zsad.scoring.scorers.diffpath import DiffPath6D, diffpath_statistics
from zsad.scoring.scorers.diffpath_v2 import DiffPathV2
from zsad.scoring.scorers.trajectory import ddim_invert

# The V2 half's own defaults, where they differ from `diffpath_v2`'s (the paper's reading).
V2_HALF_DEFAULTS = {"weighting": "none"}
FUSED_VERSION = 1  # bump when the fusion itself changes; the halves' versions are part of `version` already


@dataclass
class DiffPathFused(Scorer):
    """[DiffPath-6D features, DiffPathV2 features] per image; `v2` holds the V2 half's options (over
    V2_HALF_DEFAULTS). Maps: the V2 half's."""

    steps: int = 10
    clip_denoised: bool = True
    v2: dict = field(default_factory=dict)

    name: ClassVar[str] = "diffpath_fused"
    map_meaning: ClassVar[Optional[str]] = "the V2 half's: mean |Stein score error| over steps and channels"

    def __post_init__(self) -> None:
        # `v2` may be the V2 half's own `options()` (with its name), as a recorded recipe holds them
        if self.v2.get("name", DiffPathV2.name) != DiffPathV2.name:
            raise ConfigError(f"diffpath_fused: v2 holds diffpath_v2 options, not {self.v2['name']}'s.")
        self.v2 = {k: v for k, v in self.v2.items() if k != "name"}
        unknown = set(self.v2) - {f for f in DiffPathV2.__dataclass_fields__} - {"network_batch"}
        if unknown:
            raise ConfigError(f"diffpath_fused: v2 has no option(s) {sorted(unknown)}.")
        if "steps" in self.v2 and int(self.v2["steps"]) != self.steps:
            raise ConfigError("diffpath_fused: v2.steps must equal steps (one path length for both halves).")
        self.six = DiffPath6D(steps=self.steps, clip_denoised=self.clip_denoised, network_batch=self.network_batch)
        self.two = DiffPathV2(**{**V2_HALF_DEFAULTS, **self.v2, "steps": self.steps, "network_batch": self.network_batch})

    def options(self) -> dict:
        return {"name": self.name, "steps": self.steps, "clip_denoised": self.clip_denoised, "v2": self.two.options()}

    @property
    def version(self) -> str:  # type: ignore[override]
        """Its own version and its halves': a change to either half's code changes these features too."""
        return f"{FUSED_VERSION}+{self.six.version}+{self.two.version}"

    @property
    def shares_inversion(self) -> bool:
        return self.two.trajectory == "ddim_inversion" and self.two.clip_denoised == self.clip_denoised and self.two.time_range is None

    @property
    def feature_names(self) -> list[str]:
        return [f"6d_{n}" for n in self.six.feature_names] + [f"v2_{n}" for n in self.two.feature_names]

    def network_evaluations_per_image(self, num_timesteps: int) -> int:
        return self.steps if self.shares_inversion else 2 * self.steps

    def rows_per_call(self, batch: int) -> int:
        return min(self.six.rows_per_call(batch), self.two.rows_per_call(batch))

    def sources(self) -> list[Scorer]:
        # With a forward V2 half the two halves share no network call, so they are extracted (and cached) as
        # the two scorers they are, and a benchmark that runs those too pays nothing more for this one.
        return [] if self.shares_inversion else [self.six, self.two]

    def derive(self, source_features: Sequence):
        six, two = source_features
        if isinstance(six, np.ndarray):
            return np.concatenate([six.astype(np.float64), two.astype(np.float64)], axis=1)
        return torch.cat([six.to(torch.float64), two.to(torch.float64)], dim=1)

    def features_and_maps(self, backbone: Backbone, images: torch.Tensor, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.shares_inversion:  # one inversion: DiffPath's ε list and V2's errors from the same states
            inv = ddim_invert(backbone, images, self.steps, self.clip_denoised)
            err = self.two.weighted(images, *self.two.inversion_errors(inv, images, backbone))
            return self.derive([diffpath_statistics(inv.eps), self.two.features_of(err)]), self.two.maps_of(err)
        six, _ = self.six.features_and_maps(backbone, images, seeds)
        two, maps = self.two.features_and_maps(backbone, images, seeds)
        return self.derive([six, two]), maps
