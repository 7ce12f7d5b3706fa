"""DiffPath (Heng et al., NeurIPS 2024), docs/method.md §3.2: statistics of the ε path of DDIM inversion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch

from zsad.diffusion.backbone import Backbone
from zsad.scoring.scorers.base import Scorer, moments
from zsad.scoring.scorers.trajectory import ddim_invert


def diffpath_statistics(eps: torch.Tensor) -> torch.Tensor:
    """6-D DiffPath features from the ε list [K, B, 3, H, W]:
    [Σε, Σε², Σε³, Σdε, Σdε², Σdε³] with dε = K·diff(ε) over steps (multiplied before the powers)."""
    K = eps.shape[0]
    eps = eps.transpose(0, 1)  # [B, K, ...]
    d = (eps[:, 1:] - eps[:, :-1]) * K
    return moments(eps, d)


@dataclass
class DiffPath6D(Scorer):
    """DiffPath-6D: DDIM inversion over `steps` kept steps; features for a GMM. No per-pixel maps: its
    statistics are signed sums over the whole image."""

    steps: int = 10
    clip_denoised: bool = True

    name: ClassVar[str] = "diffpath_6d"

    @property
    def feature_names(self) -> list[str]:
        return ["eps_sum", "eps_sum_sq", "eps_sum_cb", "deps_dt", "deps_dt_sq", "deps_dt_cb"]

    def features_and_maps(self, backbone: Backbone, images: torch.Tensor, seeds: torch.Tensor) -> tuple[torch.Tensor, None]:
        return diffpath_statistics(ddim_invert(backbone, images, self.steps, self.clip_denoised).eps), None


@dataclass
class DiffPath1D(DiffPath6D):
    """DiffPath-1D: sqrt(Σ dε²), scored with a Gaussian KDE; derived from DiffPath-6D's features, so one
    inversion serves both."""

    name: ClassVar[str] = "diffpath_1d"
    detector: ClassVar[str] = "kde"

    @property
    def feature_names(self) -> list[str]:
        return ["deps_dt_sq_sqrt"]

    def features_and_maps(self, backbone: Backbone, images: torch.Tensor, seeds: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.derive([super().features_and_maps(backbone, images, seeds)[0]]), None

    def sources(self) -> list[Scorer]:
        return [DiffPath6D(steps=self.steps, clip_denoised=self.clip_denoised, network_batch=self.network_batch)]

    def derive(self, source_features: Sequence):
        """sqrt(Σ dε²) from the 6-D features (torch or numpy)."""
        (six,) = source_features
        if isinstance(six, np.ndarray):  # torch's sqrt, not numpy's: they differ in the last bit
            return self.derive([torch.from_numpy(six)]).numpy()
        return six[:, 4:5].sqrt()
