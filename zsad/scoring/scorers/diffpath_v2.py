"""DiffPathV2 (Abdi et al., ICCV-W 2025), docs/method.md §3.1: the Stein score error along a diffusion path,
amplified through an SSIM map by default, as the paper's abstract says (the readings the paper leaves open
are options)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from kornia.metrics import ssim

from zsad.diffusion.backbone import Backbone
from zsad.diffusion.schedule import noise_coefficients
from zsad.errors import ConfigError
from zsad.scoring.scorers.base import MOMENT_KINDS, Scorer, moment_features, per_image_noise
from zsad.scoring.scorers.trajectory import ddim_invert, forward_noised, kept_timesteps, spaced_alphas_cumprod


def ssim_map(x0: torch.Tensor, x0_hat: torch.Tensor, window: int = 11) -> torch.Tensor:
    """SSIM map per pixel and channel of images in [-1, 1] (kornia, Gaussian window, σ 1.5, same size)."""
    return ssim((x0 + 1) / 2, (x0_hat + 1) / 2, window_size=window, max_val=1.0)


def ssim_weight(x0: torch.Tensor, x0_hat: torch.Tensor, window: int = 11) -> torch.Tensor:
    """w = (1 − SSIM map)/2 ∈ [0, 1], per pixel and channel."""
    return ((1 - ssim_map(x0, x0_hat, window)) / 2).clamp(0, 1)


# What multiplies the Stein error, from the structural dissimilarity D = 1 − S ∈ [0, 2] (docs/method.md §3.1).
WEIGHTINGS = {
    "ssim": lambda dis: (dis / 2).clamp(0, 1),  # (1 − S)/2 ∈ [0, 1]: suppresses where the prediction is right
    "one_minus_ssim": lambda dis: dis.clamp(0, 2),  # 1 − S ∈ [0, 2]
    "amplify": lambda dis: 1 + dis.clamp(min=0),  # 1 + (1 − S) ≥ 1: never below the plain error
}


# Published AUROC of DiffPathV2 with a CelebA base model (EigenScore paper, Table 1; docs/method.md §5).
PUBLISHED_AUROC = {
    ("celeba", "cifar10"): 1.000, ("celeba", "cifar100"): 0.995, ("celeba", "svhn"): 0.969,
    ("cifar10", "cifar100"): 0.535, ("cifar10", "svhn"): 0.812, ("cifar10", "celeba"): 0.862,
    ("cifar100", "cifar10"): 0.483, ("cifar100", "svhn"): 0.724, ("cifar100", "celeba"): 0.513,
    ("svhn", "cifar10"): 0.969, ("svhn", "cifar100"): 0.975, ("svhn", "celeba"): 0.883,
}


@dataclass
class DiffPathV2(Scorer):
    """DiffPathV2 as the paper describes it: features [Σẽ, Σẽ², Σẽ³, Σd, Σd², Σd³] of the Stein score error
    amplified through SSIM, ẽ_k = (ε̂_k − ε) ⊙ (1 + (1 − SSIM(x0, x̂0_k))), over K steps of a forward path.
    Maps: mean |ẽ| over steps and channels, per pixel.

    `weighting: amplify` is the reading of the abstract's "Stein score errors amplified through SSIM". The
    ablation (docs/ablations.md) found the plain error (`weighting: none`) 0.017 higher in mean near-shift
    AUROC on the demo benchmark and 0.014 higher on the 32 px one; that reading lives on as the V2 half of
    `diffpath_fused`, zsad's recommended detector, so this name keeps meaning the paper's method."""

    steps: int = 10
    trajectory: str = "forward"  # forward | ddim_inversion
    weighting: str = "amplify"  # amplify e⊙(1+(1−S)) (the paper's words) | none | ssim (1−S)/2 | one_minus_ssim (1−S)
    shared_noise: bool = True  # one ε per image for the whole path (forward trajectory only)
    moments: str = "signed"  # signed | abs | norms (Σ|e|, (Σe²)^½, (Σ|e|³)^⅓; the same for d)
    ssim_window: int = 11
    clip_denoised: bool = True  # for ddim_inversion
    time_range: Optional[list] = None  # [first, last] kept step as fractions of T; None: ddimK spacing

    name: ClassVar[str] = "diffpath_v2"
    map_meaning: ClassVar[Optional[str]] = "mean |weighted Stein score error| over steps and channels"
    published_auroc: ClassVar[dict] = PUBLISHED_AUROC
    published_source: ClassVar[str] = "DiffPathV2 with a CelebA base model, EigenScore paper Table 1"
    published_trained_on: ClassVar[str] = "celeba"

    def __post_init__(self) -> None:
        for field, value, allowed in (
            ("trajectory", self.trajectory, ("forward", "ddim_inversion")),
            ("weighting", self.weighting, (*WEIGHTINGS, "none")),
            ("moments", self.moments, MOMENT_KINDS),
        ):
            if value not in allowed:
                raise ConfigError(f"diffpath_v2: {field}='{value}' is not one of {', '.join(allowed)}.")
        if self.steps < 2:
            raise ConfigError("diffpath_v2: steps must be at least 2 (the features need a time derivative).")
        if self.time_range is not None:
            if len(self.time_range) != 2 or not 0 <= float(self.time_range[0]) < float(self.time_range[1]) <= 1:
                raise ConfigError(f"diffpath_v2: time_range must be [first, last] with 0 <= first < last <= 1; got {self.time_range}.")
            self.time_range = [float(v) for v in self.time_range]

    def rows_per_call(self, batch: int) -> int:
        # forward: the K noised copies of every image go through the network together
        return batch * self.steps if self.trajectory == "forward" else batch

    @property
    def feature_names(self) -> list[str]:
        if self.moments == "norms":
            return ["err_l1", "err_l2", "err_l3", "derr_dt_l1", "derr_dt_l2", "derr_dt_l3"]
        return ["err_sum", "err_sum_sq", "err_sum_cb", "derr_dt", "derr_dt_sq", "derr_dt_cb"]

    def errors(self, backbone: Backbone, x0: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The weighted errors ẽ as [B, K, 3, H, W]."""
        B, K = x0.shape[0], self.steps
        if self.trajectory == "forward":
            ts = kept_timesteps(backbone.num_timesteps, K, self.time_range)
            noise = per_image_noise(ids, x0.shape[1:], 1 if self.shared_noise else K, x0.dtype).to(x0.device)
            noise = noise.expand(B, K, *x0.shape[1:])
            x_t, sa, s1a = forward_noised(backbone, x0, ts, noise)  # [B, K, ...]; all K network calls are independent
            t = ts.to(x0.device).repeat(B)
            eps_hat = backbone.predict_eps(x_t.flatten(0, 1), t).view_as(x_t)
            err = eps_hat - noise
            x0_hat = ((x_t - s1a * eps_hat) / sa).clamp(-1, 1)
        else:
            inv = ddim_invert(backbone, x0, K, self.clip_denoised, self.time_range)
            return self.weighted(x0, *self.inversion_errors(inv, x0, backbone))
        return self.weighted(x0, err, x0_hat)

    def inversion_errors(self, inv, x0: torch.Tensor, backbone: Backbone) -> tuple[torch.Tensor, torch.Tensor]:
        """(errors, x̂0) [B, K, …] of a DDIM inversion: network output against the noise the state carries."""
        K = self.steps
        ts, _ = spaced_alphas_cumprod(backbone, K, self.time_range)
        sa, s1a = (c.view(K, 1, 1, 1, 1) for c in noise_coefficients(backbone.alphas_cumprod, ts, x0.dtype, x0.device))
        implied = (inv.states - sa * x0.unsqueeze(0)) / s1a  # the noise the state actually carries
        err = (inv.raw_eps - implied).transpose(0, 1)
        x0_hat = ((inv.states - s1a * inv.raw_eps) / sa).clamp(-1, 1).transpose(0, 1)
        return err, x0_hat

    def weighted(self, x0: torch.Tensor, err: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
        """The error map times the weighting's function of the structural dissimilarity 1 − SSIM(x0, x̂0)."""
        if self.weighting == "none":
            return err
        ref = x0.unsqueeze(1).expand_as(x0_hat).flatten(0, 1)
        dissimilarity = (1 - ssim_map(ref, x0_hat.flatten(0, 1), self.ssim_window)).view_as(err)
        return WEIGHTINGS[self.weighting](dissimilarity) * err

    def features_of(self, err: torch.Tensor) -> torch.Tensor:
        d = (err[:, 1:] - err[:, :-1]) * self.steps
        return moment_features(err, d, self.moments)

    @staticmethod
    def maps_of(err: torch.Tensor) -> torch.Tensor:
        """Per-pixel maps [B, H, W]: mean |ẽ| over steps and channels."""
        return err.abs().mean(dim=(1, 2))

    def features_and_maps(self, backbone: Backbone, images: torch.Tensor, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        err = self.errors(backbone, images, seeds)
        return self.features_of(err), self.maps_of(err)
