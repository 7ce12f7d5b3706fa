"""DiffPathV2 (Abdi et al., ICCV-W 2025), design.md §3.1: SSIM-weighted Stein score error along a path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from kornia.metrics import ssim

from zsad.diffusion.backbone import Backbone
from zsad.errors import ConfigError
from zsad.ood.scorers.base import Scorer, moments, per_image_noise
from zsad.ood.scorers.trajectory import ddim_invert, spaced_alphas_cumprod


def ssim_weight(x0: torch.Tensor, x0_hat: torch.Tensor, window: int = 11) -> torch.Tensor:
    """w = (1 − SSIM map)/2 ∈ [0, 1], per pixel and channel (kornia, Gaussian window, σ 1.5, same size)."""
    s = ssim((x0 + 1) / 2, (x0_hat + 1) / 2, window_size=window, max_val=1.0)
    return ((1 - s) / 2).clamp(0, 1)


@dataclass
class DiffPathV2(Scorer):
    """Features [Σẽ, Σẽ², Σẽ³, Σd, Σd², Σd³] of the SSIM-weighted error ẽ_k = w_k ⊙ (ε̂_k − ε) over K steps."""

    steps: int = 10
    trajectory: str = "forward"  # forward | ddim_inversion
    weighting: str = "ssim"  # ssim | none
    shared_noise: bool = True  # one ε per image for the whole path (forward trajectory only)
    moments: str = "signed"  # signed | abs
    ssim_window: int = 11
    clip_denoised: bool = True  # for ddim_inversion

    name: ClassVar[str] = "diffpath_v2"

    def __post_init__(self) -> None:
        for field, value, allowed in (
            ("trajectory", self.trajectory, ("forward", "ddim_inversion")),
            ("weighting", self.weighting, ("ssim", "none")),
            ("moments", self.moments, ("signed", "abs")),
        ):
            if value not in allowed:
                raise ConfigError(f"diffpath_v2: {field}='{value}' is not one of {', '.join(allowed)}.")
        if self.steps < 2:
            raise ConfigError("diffpath_v2: steps must be at least 2 (the features need a time derivative).")

    def rows_per_call(self, batch: int) -> int:
        # forward: the K noised copies of every image go through the network together
        return batch * self.steps if self.trajectory == "forward" else batch

    @property
    def feature_names(self) -> list[str]:
        return ["err_sum", "err_sum_sq", "err_sum_cb", "derr_dt", "derr_dt_sq", "derr_dt_cb"]

    def errors(self, backbone: Backbone, x0: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The weighted errors ẽ as [B, K, 3, H, W] (also used for per-pixel heat maps)."""
        B, K = x0.shape[0], self.steps
        if self.trajectory == "forward":
            ts, ab = spaced_alphas_cumprod(backbone, K)
            noise = per_image_noise(ids, x0.shape[1:], 1 if self.shared_noise else K).to(x0.device)
            noise = noise.expand(B, K, *x0.shape[1:])
            sa = ab.sqrt().to(torch.float32).view(1, K, 1, 1, 1).to(x0.device)
            s1a = (1 - ab).sqrt().to(torch.float32).view(1, K, 1, 1, 1).to(x0.device)
            x_t = sa * x0.unsqueeze(1) + s1a * noise  # [B, K, ...]; all K network calls are independent
            t = ts.to(x0.device).repeat(B)
            eps_hat = backbone.predict_eps(x_t.flatten(0, 1), t).view_as(x_t)
            err = eps_hat - noise
            x0_hat = ((x_t - s1a * eps_hat) / sa).clamp(-1, 1)
        else:
            inv = ddim_invert(backbone, x0, K, self.clip_denoised)
            ts, ab = spaced_alphas_cumprod(backbone, K)
            sa = ab.sqrt().to(torch.float32).view(K, 1, 1, 1, 1).to(x0.device)
            s1a = (1 - ab).sqrt().to(torch.float32).view(K, 1, 1, 1, 1).to(x0.device)
            implied = (inv.states - sa * x0.unsqueeze(0)) / s1a  # the noise the state actually carries
            err = (inv.raw_eps - implied).transpose(0, 1)
            x0_hat = ((inv.states - s1a * inv.raw_eps) / sa).clamp(-1, 1).transpose(0, 1)
        if self.weighting == "ssim":
            ref = x0.unsqueeze(1).expand_as(x0_hat).flatten(0, 1)
            w = ssim_weight(ref, x0_hat.flatten(0, 1), self.ssim_window).view_as(err)
            err = w * err
        return err

    def compute(self, backbone: Backbone, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        err = self.errors(backbone, images, ids)
        d = (err[:, 1:] - err[:, :-1]) * self.steps
        return moments(err, d, absolute=self.moments == "abs")
