"""Two simple baselines for `zsad test`, run on the same images, split and working size as the detectors:

* `pixel_gaussian`: a Gaussian per pixel and channel of the normal images at the working size; the map is
  the mean over channels of the squared z-score, the image score its maximum.
* `nearest_ssim`: the SSIM distance to the nearest normal image (the fit image with the highest mean SSIM);
  the map is 1 − SSIM averaged over channels, the image score its maximum.

Neither uses the diffusion model: where one wins, the diffusion features add nothing on that data."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from zsad.scoring.scorers.diffpath_v2 import ssim_map

BASELINES = ("pixel_gaussian", "nearest_ssim")


class PixelGaussian:
    """Per-pixel, per-channel Gaussian of normal images."""

    name: ClassVar[str] = "pixel_gaussian"

    def fit(self, images: torch.Tensor) -> "PixelGaussian":
        x = images.to(torch.float64)
        self.mean = x.mean(dim=0)
        self.std = x.std(dim=0, unbiased=True).clamp(min=1e-3) if len(x) > 1 else torch.full_like(self.mean, 1.0)
        return self

    def maps(self, images: torch.Tensor) -> torch.Tensor:
        z = (images.to(torch.float64) - self.mean) / self.std
        return (z * z).mean(dim=1)


class NearestSSIM:
    """SSIM distance to the most similar normal image."""

    name: ClassVar[str] = "nearest_ssim"

    def __init__(self, chunk: int = 64):
        self.chunk = chunk

    def fit(self, images: torch.Tensor) -> "NearestSSIM":
        self.bank = images.to(torch.float32)
        return self

    def maps(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for x in images.to(torch.float32):
            best, best_map = -np.inf, None
            for start in range(0, len(self.bank), self.chunk):
                bank = self.bank[start : start + self.chunk]
                s = ssim_map(x.expand_as(bank), bank)  # [n, 3, W, W]
                means = s.flatten(1).mean(1)
                j = int(means.argmax())
                if float(means[j]) > best:
                    best, best_map = float(means[j]), s[j]
            out.append((1 - best_map.mean(dim=0)).to(torch.float64))
        return torch.stack(out)


def build_baseline(name: str) -> PixelGaussian | NearestSSIM:
    return {"pixel_gaussian": PixelGaussian, "nearest_ssim": NearestSSIM}[name]()
