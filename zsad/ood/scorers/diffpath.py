"""DiffPath (Heng et al., NeurIPS 2024), design.md §3.2: statistics of the ε path of DDIM inversion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from zsad.diffusion.backbone import Backbone
from zsad.ood.scorers.base import Scorer, moments
from zsad.ood.scorers.trajectory import ddim_invert


def diffpath_statistics(eps: torch.Tensor) -> torch.Tensor:
    """6-D DiffPath features from the ε list [K, B, 3, H, W]:
    [Σε, Σε², Σε³, Σdε, Σdε², Σdε³] with dε = K·diff(ε) over steps (multiplied before the powers)."""
    K = eps.shape[0]
    eps = eps.transpose(0, 1)  # [B, K, ...]
    d = (eps[:, 1:] - eps[:, :-1]) * K
    return moments(eps, d)


@dataclass
class DiffPath6D(Scorer):
    """DiffPath-6D: DDIM inversion over `steps` kept steps; features for a GMM."""

    steps: int = 10
    clip_denoised: bool = True

    name: ClassVar[str] = "diffpath_6d"

    @property
    def feature_names(self) -> list[str]:
        return ["eps_sum", "eps_sum_sq", "eps_sum_cb", "deps_dt", "deps_dt_sq", "deps_dt_cb"]

    def compute(self, backbone: Backbone, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return diffpath_statistics(ddim_invert(backbone, images, self.steps, self.clip_denoised).eps)


@dataclass
class DiffPath1D(DiffPath6D):
    """DiffPath-1D: sqrt(Σ dε²), scored with a Gaussian KDE."""

    name: ClassVar[str] = "diffpath_1d"
    detector: ClassVar[str] = "kde"

    @property
    def feature_names(self) -> list[str]:
        return ["deps_dt_sq_sqrt"]

    def compute(self, backbone: Backbone, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return super().compute(backbone, images, ids)[:, 4:5].sqrt()
