"""Anomaly maps and image scores from tile scores and per-pixel maps (docs/method.md §7).

Two maps per image, both at the working shape:
* the *tile map*: every tile's detector score, standardised by the fit tiles' scores, blended over the
  tiles that cover each pixel (`blend`: the per-pixel maximum by default, so that an anomalous tile gives
  the same map maximum wherever it sits, at any stride and shape; see `Tiling.blend`). The image score is its maximum (`aggregation: max`) or
  the mean of its top `top_k` share of pixels, so the image decision rests on the detector alone.
* the *anomaly map* shown and scored per pixel, by `combination`:
  - `tile`: the tile map;
  - `tile+pixel` (the default where the scorer has maps): the tile map plus the scorer's per-pixel map,
    blended with Hann weights, smoothed with a Gaussian of σ = tile / 8 px and standardised by the calibration
    images' pixel values: the tile says how unusual the region is, the pixel map says where inside it;
  - `pixel`: the scorer's per-pixel map alone (what detectors without calibration, e.g. from
    `zsad evaluate`, can show).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch

from zsad.errors import ConfigError
from zsad.scoring.tiles import BLENDS, Tiling

COMBINATIONS = ("tile", "tile+pixel", "pixel")
AGGREGATIONS = ("max", "top_k")


@dataclass
class MapSettings:
    """How maps and image scores are made, and the map's threshold and colour scale (from calibration)."""

    combination: str = "tile+pixel"
    aggregation: str = "max"
    blend: str = "max"  # how tile scores are blended into the tile map (tiles.BLENDS; experiments/ad_demo/BLEND_RULE.md chose it)
    top_k: float = 0.1  # share of the working-size pixels averaged by `top_k` (10%: more than one tile of a 4×4 grid)
    tile_mean: float = 0.0  # standardisation of tile scores (the fit tiles' mean and standard deviation)
    tile_std: float = 1.0
    pixel_mean: float = 0.0  # standardisation of per-pixel maps (the calibration images' pixels)
    pixel_std: float = 1.0
    pixel_sigma: float = 0.0  # Gaussian smoothing of the blended per-pixel map, in working-size pixels (tile / 8 when fitted)
    # anomaly-map threshold: the k-th largest of the calibration images' map maxima, k = ⌊α(n_cal + 1)⌋, so a normal image
    # shows any outline with probability at most α (as an image is flagged); None without calibration, +inf when k = 0
    threshold: Optional[float] = None
    vmin: Optional[float] = None  # colour scale of overlays, fixed before the first image is scored
    vmax: Optional[float] = None

    def __post_init__(self) -> None:
        if self.combination not in COMBINATIONS:
            raise ConfigError(f"map combination '{self.combination}' is not one of {', '.join(COMBINATIONS)}.")
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"image-score aggregation '{self.aggregation}' is not one of {', '.join(AGGREGATIONS)}.")
        if self.blend not in BLENDS:
            raise ConfigError(f"tile blend '{self.blend}' is not one of {', '.join(BLENDS)}.")
        if not 0 < float(self.top_k) <= 1:
            raise ConfigError(f"top_k is a share of the pixels in (0, 1]; got {self.top_k}.")

    def to_dict(self) -> dict:
        return asdict(self)


def tile_map(tiling: Tiling, tile_scores: torch.Tensor, settings: MapSettings) -> torch.Tensor:
    """Standardised tile scores [B, T] blended into maps [B, H, W] (float64)."""
    z = (tile_scores.to(torch.float64) - settings.tile_mean) / settings.tile_std
    return tiling.blend(z, settings.blend)


def anomaly_map(tile_maps: torch.Tensor, pixel_maps: Optional[torch.Tensor], settings: MapSettings) -> torch.Tensor:
    """The anomaly maps [B, W, W] of `settings.combination`, from the tile maps and the per-pixel maps of
    `pixel_map` (blended and smoothed, then standardised here by the calibration images' moments)."""
    if settings.combination == "tile" or pixel_maps is None:
        return tile_maps
    pixels = (pixel_maps.to(torch.float64) - settings.pixel_mean) / settings.pixel_std
    return pixels if settings.combination == "pixel" else tile_maps + pixels


def pixel_map(tiling: Tiling, pixel_maps: Optional[torch.Tensor], settings: MapSettings) -> Optional[torch.Tensor]:
    """Per-tile pixel maps [B, T, s, s] blended into [B, H, W] and smoothed (not yet standardised): single-pixel
    errors are noise at the scale of a defect, as PatchCore's and anomalib's smoothed maps assume. Every covering
    tile estimates the same pixel's error, so they are averaged (Hann-weighted: a tile's border sees the least
    context), never maximised."""
    if pixel_maps is None:
        return None
    blended = tiling.blend(pixel_maps.to(torch.float64), "mean" if settings.blend == "mean" else "hann")
    if settings.pixel_sigma <= 0:
        return blended
    from scipy.ndimage import gaussian_filter

    return torch.from_numpy(np.stack([gaussian_filter(m, settings.pixel_sigma, mode="nearest") for m in blended.numpy()]))


def image_scores(tiles: torch.Tensor, settings: MapSettings) -> np.ndarray:
    """One score per image from its tile map: the maximum, or the mean of the top `top_k` share of pixels."""
    flat = tiles.flatten(1)
    if settings.aggregation == "max":
        return flat.max(dim=1).values.numpy()
    k = max(1, int(round(settings.top_k * flat.shape[1])))
    return flat.topk(k, dim=1).values.mean(dim=1).numpy()


def map_threshold(calibration_maxima: np.ndarray, alpha: float) -> float:
    """The outline threshold: the k-th largest calibration map maximum, k = ⌊α(n_cal + 1)⌋ (+inf when k = 0). A new
    normal image exchangeable with the calibration images has its map maximum above it, so shows any outline, with
    probability at most α: the image-level guarantee applied to the map's maximum."""
    from zsad.detection.conformal import threshold

    return threshold(calibration_maxima, alpha)


def colour_scale(typical: float, threshold: float, top: float) -> tuple[float, float]:
    """(vmin, vmax) of overlays: from a typical normal pixel (the median of the calibration maps' medians) to as far
    above the threshold as the threshold is above it, so the threshold sits in the middle of the bar. Without a finite
    threshold (too few calibration images for α) the bar ends at the largest calibration value `top`."""
    if not np.isfinite(threshold):
        return typical, max(top, typical + 1e-12)
    span = max(threshold - typical, 1e-12)
    return typical, threshold + span


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """One map [H, W] bilinearly resized to (height, width) of the input image."""
    out = torch.nn.functional.interpolate(maps[None, None].to(torch.float32), size=size, mode="bilinear", align_corners=False)
    return out[0, 0].numpy()
