"""UFCOD ("Geometry over Density: Few-Shot Cross-Domain OOD Detection", arXiv 2605.03410), docs/method.md §3.5:
two of DiffPath-6D's statistics, scored by a soft-min kNN over a few reference images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch

from zsad.diffusion.backbone import Backbone
from zsad.scoring.scorers.base import Scorer
from zsad.scoring.scorers.diffpath import DiffPath6D

# Columns of DiffPath-6D's [Σε, Σε², Σε³, Σdε, Σdε², Σdε³] that UFCOD keeps (its feature_indices [1, 4]).
ENERGY_COLUMNS = [1, 4]


@dataclass
class UFCOD(DiffPath6D):
    """UFCOD: Path Energy Σε² and Dynamics Energy Σdε² (dε = K·diff(ε)) of DiffPath-6D's DDIM inversion, for
    the `softmin_knn` detector (facility-location references, soft minimum over the k nearest). Derived from
    DiffPath-6D's features: no network evaluation of its own, one inversion serves both."""

    name: ClassVar[str] = "ufcod"
    detector: ClassVar[str] = "softmin_knn"
    # The four pairs of UFCOD's README at commit 87e4eef (its paper's 12-pair table could not be read here), each with
    # about 100 ID images and DiffPath's CelebA-32 model: like with like beside zsad's DiffPath CelebA-32 backbone.
    published_auroc: ClassVar[dict] = {("cifar10", "svhn"): 0.951, ("cifar10", "celeba"): 0.965, ("svhn", "cifar10"): 0.973,
                                       ("celeba", "cifar10"): 0.995}
    published_source: ClassVar[str] = "UFCOD README (github.com/lili0415/UFCOD at 87e4eef), ~100 ID images, DiffPath CelebA-32"
    published_trained_on: ClassVar[str] = "celeba"

    @property
    def feature_names(self) -> list[str]:
        return ["path_energy", "dynamics_energy"]

    def features_and_maps(self, backbone: Backbone, images: torch.Tensor, seeds: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.derive([super().features_and_maps(backbone, images, seeds)[0]]), None

    def sources(self) -> list[Scorer]:
        return [DiffPath6D(steps=self.steps, clip_denoised=self.clip_denoised, network_batch=self.network_batch)]

    def derive(self, source_features: Sequence):
        """[Σε², Σdε²] from the 6-D features (torch or numpy): a column selection, bit for bit."""
        (six,) = source_features
        if isinstance(six, np.ndarray):
            return np.ascontiguousarray(six[:, ENERGY_COLUMNS])
        return six[:, ENERGY_COLUMNS].contiguous()
