"""Tiles: images at a working size cut into tiles at the backbone's resolution (docs/method.md §7).

A base model works at 16–64 px; the images a user checks are often 256–1024 px, and not always square.
`Tiling` cuts an image resized to its working shape (height × width, the aspect ratio kept) into `tile`-sized
tiles every `stride` pixels along both axes (the last row and column are moved in so the tiles cover the whole
image) and blends per-tile values back into a map, with weights that make a tile count the same wherever it sits. `TiledScorer` gives any
scorer's features per tile: the tiles of many images share network calls, and each tile's noise is seeded by
its own pixels (docs/method.md §2), so a tile has the same features wherever it appears. With one tile the
size of the image, it is the scorer itself: the same seeds, the same features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from zsad.diffusion.backbone import Backbone
from zsad.errors import ConfigError
from zsad.scoring.scorers.base import Scorer, image_seeds


def _starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile start offsets along one axis: every `stride`, the last one moved in to end at `size`."""
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


BLENDS = ("hann", "max", "mean")


def hann_window(tile: int) -> torch.Tensor:
    """[tile, tile] float64 weights sin²(πi/tile)·sin²(πj/tile): zero on a tile's first row and column, one at
    its centre. At a stride of half a tile the weights of the covering tiles sum to one (sin² + cos² = 1), and
    a tile's centre is covered with nonzero weight by that tile alone, so a blended map takes every tile's own
    value at its centre. That holds where the tiles are regular (stride tile or tile/2, the last row not moved
    in); elsewhere a neighbour's weight dilutes it (e.g. 8.9 instead of 10 beside a moved-in row): `max` has
    no such condition."""
    w = torch.sin(torch.pi * torch.arange(tile, dtype=torch.float64) / tile) ** 2
    return w[:, None] * w[None, :]


@dataclass(frozen=True)
class Tiling:
    """Square tiles of side `tile` every `stride` pixels over an image resized to `height` × `width` (the
    working shape; its longer side is the working size)."""

    height: int
    width: int
    tile: int
    stride: int

    def __post_init__(self) -> None:
        if min(self.tile, self.stride, self.height, self.width) < 1:
            raise ConfigError(f"tiles need positive sizes; got a working shape of {self.height}×{self.width} px, tile {self.tile}, stride {self.stride}.")
        if self.tile > min(self.height, self.width):
            raise ConfigError(f"The working shape ({self.height}×{self.width} px) is smaller than one tile ({self.tile} px, the backbone's resolution). "
                              f"Use --working-size {self.tile} or more.")
        if self.stride > self.tile:
            raise ConfigError(f"A tile stride of {self.stride} px leaves gaps between {self.tile} px tiles. Use --tile-stride {self.tile} or less.")

    @classmethod
    def whole(cls, size: int) -> "Tiling":
        """One tile: the whole image at the backbone's resolution."""
        return cls(size, size, size, size)

    @classmethod
    def from_dict(cls, d: dict) -> "Tiling":
        return cls(int(d["height"]), int(d["width"]), int(d["tile"]), int(d["stride"]))

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the working shape."""
        return self.height, self.width

    @property
    def working_size(self) -> int:
        """The working shape's longer side."""
        return max(self.height, self.width)

    @property
    def offsets(self) -> list[tuple[int, int]]:
        """(row, column) of every tile's top-left pixel, row by row."""
        return [(y, x) for y in _starts(self.height, self.tile, self.stride) for x in _starts(self.width, self.tile, self.stride)]

    @property
    def count(self) -> int:
        return len(self.offsets)

    def positions(self) -> torch.Tensor:
        """Tile centres as fractions of the image in [0, 1], float64 [T, 2] (the optional detector input)."""
        half = self.tile / 2
        return torch.tensor([[(y + half) / self.height, (x + half) / self.width] for y, x in self.offsets], dtype=torch.float64)

    def cut(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] images → [B·T, C, tile, tile] tiles, image by image, tiles in `offsets` order."""
        if tuple(images.shape[-2:]) != self.shape:
            raise ValueError(f"images must be {self.height}×{self.width}; got {tuple(images.shape[-2:])}")
        s = self.tile
        return torch.stack([images[:, :, y : y + s, x : x + s] for y, x in self.offsets], dim=1).flatten(0, 1)

    def blend(self, values: torch.Tensor, how: str = "max") -> torch.Tensor:
        """Per-tile values [B, T] (constant over each tile) or [B, T, tile, tile] → maps [B, H, W].

        `max`: the largest covering value (position-invariant at any stride and shape: the map's maximum is the
        largest tile value); `hann`: the mean over the covering tiles weighted by `hann_window` (where every
        covering weight is zero the plain mean; invariant only on regular tilings, see `hann_window`); `mean`: the
        plain mean (biased: at a stride of half a tile an interior pixel averages 4 tiles and a corner pixel 1,
        so one anomalous tile is damped up to 4× in the interior; kept for comparison only)."""
        if how not in BLENDS:
            raise ConfigError(f"tile blend '{how}' is not one of {', '.join(BLENDS)}.")
        B, s = values.shape[0], self.tile
        if values.ndim == 2:
            values = values[:, :, None, None].expand(B, self.count, s, s)
        if how == "max":
            out = torch.full((B, self.height, self.width), -torch.inf, dtype=values.dtype)
            for t, (y, x) in enumerate(self.offsets):
                region = out[:, y : y + s, x : x + s]
                torch.maximum(region, values[:, t], out=region)
            return out
        total = torch.zeros((B, self.height, self.width), dtype=values.dtype)
        cover = torch.zeros((self.height, self.width), dtype=values.dtype)
        plain_total, plain_cover = torch.zeros_like(total), torch.zeros_like(cover)
        window = hann_window(s).to(values.dtype) if how == "hann" else torch.ones((s, s), dtype=values.dtype)
        for t, (y, x) in enumerate(self.offsets):
            total[:, y : y + s, x : x + s] += values[:, t] * window
            cover[y : y + s, x : x + s] += window
            if how == "hann":
                plain_total[:, y : y + s, x : x + s] += values[:, t]
                plain_cover[y : y + s, x : x + s] += 1
        if how == "mean":
            return total / cover
        unweighted = cover <= 1e-12  # every covering tile weighs zero here (its first row or column): fall back to the plain mean
        return torch.where(unweighted, plain_total / plain_cover.clamp_min(1), total / cover.clamp_min(1e-300))

    def to_dict(self) -> dict:
        return {"height": self.height, "width": self.width, "tile": self.tile, "stride": self.stride}


@dataclass
class TiledScorer(Scorer):
    """`inner`'s features for every tile of every image: features [B, T·D] (tile after tile), maps [B, T, s, s]
    (None when `inner` has none). Not a method of its own: its recipe is `inner`'s plus the tiling."""

    inner: Optional[Scorer] = None
    tiling: Optional[Tiling] = None
    seed: int = 0  # the global seed: each tile's noise comes from (seed, the tile's pixels)
    network_batch: Optional[int] = field(default=None)

    def __post_init__(self) -> None:
        if self.inner is None or self.tiling is None:
            raise ValueError("TiledScorer needs an inner scorer and a tiling")
        self.network_batch = self.inner.network_batch
        self.version = self.inner.version  # type: ignore[misc]  # the features are inner's, tile by tile
        self.map_meaning = self.inner.map_meaning  # type: ignore[misc]
        self.detector = self.inner.detector  # type: ignore[misc]

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.inner.name}_tiles"

    @property
    def feature_names(self) -> list[str]:
        return [f"tile{t}_{n}" for t in range(self.tiling.count) for n in self.inner.feature_names]

    @property
    def tile_feature_names(self) -> list[str]:
        return self.inner.feature_names

    def options(self) -> dict:
        return {"name": self.name, "inner": self.inner.options(), "tiling": self.tiling.to_dict()}

    def network_evaluations_per_image(self, num_timesteps: int) -> int:
        return self.tiling.count * self.inner.network_evaluations_per_image(num_timesteps)

    def rows_per_call(self, batch: int) -> int:
        return self.inner.rows_per_call(batch * self.tiling.count)

    def network_batch_for(self, device: torch.device | str) -> int:
        return self.inner.network_batch_for(device)

    def features_and_maps(self, backbone: Backbone, images: torch.Tensor, seeds: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        B, T = images.shape[0], self.tiling.count
        tiles = self.tiling.cut(images)
        tile_seeds = image_seeds(self.seed, tiles)  # a tile's noise depends on its own pixels only
        features, maps = self.inner.features_and_maps(backbone, tiles, tile_seeds)
        features = features.reshape(B, T * features.shape[1])
        return features, None if maps is None else maps.reshape(B, T, *maps.shape[1:])
