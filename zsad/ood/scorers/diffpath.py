"""DiffPath (Heng et al., NeurIPS 2024), design.md §3.2: statistics of the ε path of DDIM inversion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
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
        return self.from_6d(super().compute(backbone, images, ids))

    @staticmethod
    def from_6d(features_6d):
        """sqrt(Σ dε²) from the 6-D features (torch or numpy): when both scorers run, one inversion serves both."""
        if isinstance(features_6d, np.ndarray):  # torch's sqrt, not numpy's: they differ in the last bit
            return DiffPath1D.from_6d(torch.from_numpy(features_6d)).numpy()
        return features_6d[:, 4:5].sqrt()

    def derivable_from(self, other: Scorer) -> bool:
        """Whether `other`'s features contain these (a DiffPath-6D with the same inversion and call size)."""
        return type(other) is DiffPath6D and (other.steps, other.clip_denoised, other.network_batch) == (self.steps, self.clip_denoised, self.network_batch)
