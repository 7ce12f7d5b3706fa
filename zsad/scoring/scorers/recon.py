"""Reconstruction baseline in the spirit of DDPM-OOD (Graham et al., 2023), docs/method.md §3.3."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch

from zsad.diffusion.backbone import Backbone
from zsad.diffusion.schedule import noise_coefficients
from zsad.errors import ConfigError
from zsad.scoring.scorers.base import Scorer, per_image_noise
from zsad.scoring.scorers.diffpath_v2 import ssim_weight


@dataclass
class Recon(Scorer):
    """Noise x0 to each level (a fraction of T), denoise back with deterministic DDIM in `steps` steps;
    features per level: MSE(x0, x̂0) and 1 − mean SSIM(x0, x̂0). Maps: the squared reconstruction error per
    pixel, averaged over levels and channels."""

    levels: list = field(default_factory=lambda: [0.1, 0.25, 0.4])
    steps: int = 10
    ssim_window: int = 11

    name: ClassVar[str] = "recon"
    map_meaning: ClassVar[Optional[str]] = "squared reconstruction error, mean over levels and channels"

    def __post_init__(self) -> None:
        if not self.levels or any(not 0 < float(f) < 1 for f in self.levels):
            raise ConfigError(f"recon: levels must be fractions of T in (0, 1); got {self.levels}.")
        self.levels = [float(f) for f in self.levels]

    @property
    def feature_names(self) -> list[str]:
        return [f"{kind}@{f:g}" for f in self.levels for kind in ("mse", "dssim")]

    def timesteps(self, T: int, level: float) -> torch.Tensor:
        """The DDIM timesteps of one level, from t_start = round(level·T) down to 0."""
        t_start = max(1, min(T - 1, round(level * T)))
        return torch.linspace(t_start, 0, self.steps + 1).round().long().unique_consecutive()

    def network_evaluations_per_image(self, num_timesteps: int) -> int:
        return sum(len(self.timesteps(num_timesteps, level)) - 1 for level in self.levels)

    def reconstruct(self, backbone: Backbone, x0: torch.Tensor, noise: torch.Tensor, level: float) -> torch.Tensor:
        B = x0.shape[0]
        ts = self.timesteps(backbone.num_timesteps, level).tolist()
        sa, s1a = noise_coefficients(backbone.alphas_cumprod, ts, x0.dtype, x0.device)  # coefficient j is timestep ts[j]
        x = sa[0] * x0 + s1a[0] * noise
        for j, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
            eps = backbone.predict_eps(x, torch.full((B,), t, dtype=torch.int64, device=x0.device))
            x0_hat = ((x - s1a[j] * eps) / sa[j]).clamp(-1, 1)
            x = x0_hat if t_next == 0 else sa[j + 1] * x0_hat + s1a[j + 1] * eps
        return x.clamp(-1, 1)

    def features_and_maps(self, backbone: Backbone, images: torch.Tensor, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = per_image_noise(seeds, images.shape[1:], len(self.levels), images.dtype).to(images.device)
        cols, maps = [], 0
        for j, level in enumerate(self.levels):
            rec = self.reconstruct(backbone, images, noise[:, j], level)
            squared = (rec - images) ** 2
            cols.append(squared.to(torch.float64).flatten(1).mean(1))
            cols.append((2 * ssim_weight(images, rec, self.ssim_window)).to(torch.float64).flatten(1).mean(1))
            maps = maps + squared.mean(dim=1)
        return torch.stack(cols, dim=1), maps / len(self.levels)
