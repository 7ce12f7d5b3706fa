"""Two scorers no other DiffPath implementation has (docs/method.md §3.4).

`diffpath_fused`: DiffPath-6D's and DiffPathV2's features side by side (12-D, one detector); the two
methods fail on different pairs. When the V2 half follows the DDIM inversion, one inversion serves both.
`msma`: multiscale score norms (Mahmood et al., ICLR 2021) from the same base model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from zsad.diffusion.backbone import Backbone
from zsad.errors import ConfigError
from zsad.ood.scorers.base import Scorer, per_image_noise
from zsad.ood.scorers.diffpath import DiffPath6D, diffpath_statistics
from zsad.ood.scorers.diffpath_v2 import DiffPathV2
from zsad.ood.scorers.trajectory import ddim_invert, forward_noised, kept_timesteps


@dataclass
class DiffPathFused(Scorer):
    """[DiffPath-6D features, DiffPathV2 features] per image; `v2` holds the DiffPathV2 options."""

    steps: int = 10
    clip_denoised: bool = True
    v2: dict = field(default_factory=dict)

    name: ClassVar[str] = "diffpath_fused"

    def __post_init__(self) -> None:
        unknown = set(self.v2) - {f for f in DiffPathV2.__dataclass_fields__} - {"network_batch"}
        if unknown:
            raise ConfigError(f"diffpath_fused: v2 has no option(s) {sorted(unknown)}.")
        if "steps" in self.v2 and int(self.v2["steps"]) != self.steps:
            raise ConfigError("diffpath_fused: v2.steps must equal steps (one path length for both halves).")
        self.six = DiffPath6D(steps=self.steps, clip_denoised=self.clip_denoised, network_batch=self.network_batch)
        self.two = DiffPathV2(**{**self.v2, "steps": self.steps, "network_batch": self.network_batch})

    def options(self) -> dict:
        return {"name": self.name, "steps": self.steps, "clip_denoised": self.clip_denoised, "v2": self.two.options()}

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

    def compute(self, backbone: Backbone, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if self.shares_inversion:  # one inversion: DiffPath's ε list and V2's errors from the same states
            inv = ddim_invert(backbone, images, self.steps, self.clip_denoised)
            six = diffpath_statistics(inv.eps)
            two = self.two.features_of(self.two.weighted(images, *self.two.inversion_errors(inv, images, backbone)))
        else:
            six, two = self.six.compute(backbone, images, ids), self.two.compute(backbone, images, ids)
        return torch.cat([six.to(torch.float64), two.to(torch.float64)], dim=1)


@dataclass
class MSMA(Scorer):
    """‖ε̂(x_t, t)‖₂ over pixels and channels at `levels` noise levels, x_t = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε
    with one seeded ε per image shared by all levels; levels evenly spaced over time_range·(T−1)."""

    levels: int = 10
    time_range: list = field(default_factory=lambda: [0.01, 0.9])

    name: ClassVar[str] = "msma"

    def __post_init__(self) -> None:
        if self.levels < 1 or len(self.time_range) != 2 or not 0 <= float(self.time_range[0]) < float(self.time_range[1]) <= 1:
            raise ConfigError(f"msma: needs levels >= 1 and time_range [first, last] with 0 <= first < last <= 1; got {self.levels}, {self.time_range}.")
        self.time_range = [float(v) for v in self.time_range]

    @property
    def feature_names(self) -> list[str]:
        return [f"eps_norm@{i}" for i in range(self.levels)]

    def network_evaluations_per_image(self, num_timesteps: int) -> int:
        return self.levels

    def rows_per_call(self, batch: int) -> int:
        return batch * self.levels

    def timesteps(self, num_timesteps: int) -> torch.Tensor:
        return kept_timesteps(num_timesteps, self.levels, self.time_range)

    def compute(self, backbone: Backbone, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        B, L = images.shape[0], self.levels
        ts = self.timesteps(backbone.num_timesteps)
        noise = per_image_noise(ids, images.shape[1:], 1).to(images.device).expand(B, L, *images.shape[1:])
        x_t, _, _ = forward_noised(backbone, images, ts, noise)
        eps = backbone.predict_eps(x_t.flatten(0, 1), ts.to(images.device).repeat(B)).view_as(x_t)
        return eps.to(torch.float64).flatten(2).norm(dim=2)
