"""`msma`: multiscale score matching analysis (Mahmood et al., ICLR 2021) from the same base model
(docs/method.md §3.4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from zsad.diffusion.backbone import Backbone
from zsad.errors import ConfigError
from zsad.scoring.scorers.base import Scorer, per_image_noise
from zsad.scoring.scorers.trajectory import forward_noised, kept_timesteps


@dataclass
class MSMA(Scorer):
    """‖ε̂(x_t, t)‖₂ over pixels and channels at `levels` noise levels, x_t = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε
    with one seeded ε per image shared by all levels; levels evenly spaced over time_range·(T−1). No maps."""

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

    def features_and_maps(self, backbone: Backbone, images: torch.Tensor, seeds: torch.Tensor) -> tuple[torch.Tensor, None]:
        B, L = images.shape[0], self.levels
        ts = self.timesteps(backbone.num_timesteps)
        noise = per_image_noise(seeds, images.shape[1:], 1, images.dtype).to(images.device).expand(B, L, *images.shape[1:])
        x_t, _, _ = forward_noised(backbone, images, ts, noise)
        eps = backbone.predict_eps(x_t.flatten(0, 1), ts.to(images.device).repeat(B)).view_as(x_t)
        return eps.to(torch.float64).flatten(2).norm(dim=2), None
