"""Reconstruction baseline in the spirit of DDPM-OOD (Graham et al., 2023), design.md §3.3."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from zsad.diffusion.backbone import Backbone
from zsad.errors import ConfigError
from zsad.ood.scorers.base import Scorer, per_image_noise
from zsad.ood.scorers.diffpath_v2 import ssim_weight


@dataclass
class Recon(Scorer):
    """Noise x0 to each level (a fraction of T), denoise back with deterministic DDIM in `steps` steps;
    features per level: MSE(x0, x̂0) and 1 − mean SSIM(x0, x̂0)."""

    levels: list = field(default_factory=lambda: [0.1, 0.25, 0.4])
    steps: int = 10
    ssim_window: int = 11

    name: ClassVar[str] = "recon"

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
        ts = self.timesteps(backbone.num_timesteps, level)
        ab = backbone.alphas_cumprod.detach().cpu()
        # sqrt(ᾱ) and sqrt(1 − ᾱ) in float64, then cast: near t = 0, 1 − ᾱ in float32 loses ~1e-4 relative
        sa = lambda t: torch.tensor(float(ab[t].sqrt()), dtype=torch.float32, device=x0.device)  # noqa: E731
        s1a = lambda t: torch.tensor(float((1 - ab[t]).sqrt()), dtype=torch.float32, device=x0.device)  # noqa: E731
        x = sa(ts[0]) * x0 + s1a(ts[0]) * noise
        for t, t_next in zip(ts[:-1].tolist(), ts[1:].tolist()):
            eps = backbone.predict_eps(x, torch.full((B,), t, dtype=torch.int64, device=x0.device))
            x0_hat = ((x - s1a(t) * eps) / sa(t)).clamp(-1, 1)
            x = x0_hat if t_next == 0 else sa(t_next) * x0_hat + s1a(t_next) * eps
        return x.clamp(-1, 1)

    def compute(self, backbone: Backbone, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        noise = per_image_noise(ids, images.shape[1:], len(self.levels)).to(images.device)
        cols = []
        for j, level in enumerate(self.levels):
            rec = self.reconstruct(backbone, images, noise[:, j], level)
            cols.append(((rec - images) ** 2).to(torch.float64).flatten(1).mean(1))
            cols.append((2 * ssim_weight(images, rec, self.ssim_window)).to(torch.float64).flatten(1).mean(1))
        return torch.stack(cols, dim=1)
