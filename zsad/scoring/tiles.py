"""Tiles: images at a working size cut into tiles at the backbone's resolution (docs/method.md §7).

A base model works at 16–64 px; the images a user checks are often 256–1024 px. `Tiling` cuts an image
resized to `working_size` into `tile`-sized tiles every `stride` pixels (the last row and column are moved
in so the tiles cover the whole image) and blends per-tile values back into a map. `TiledScorer` gives any
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


@dataclass(frozen=True)
class Tiling:
    """Square tiles of side `tile` every `stride` pixels over an image resized to `working_size`."""

    working_size: int
    tile: int
    stride: int

    def __post_init__(self) -> None:
        if self.tile < 1 or self.stride < 1 or self.working_size < 1:
            raise ConfigError(f"tiles need positive sizes; got working size {self.working_size}, tile {self.tile}, stride {self.stride}.")
        if self.tile > self.working_size:
            raise ConfigError(f"The working size ({self.working_size} px) is smaller than one tile ({self.tile} px, the backbone's resolution). "
                              f"Use --working-size {self.tile} or more.")
        if self.stride > self.tile:
            raise ConfigError(f"A tile stride of {self.stride} px leaves gaps between {self.tile} px tiles. Use --tile-stride {self.tile} or less.")

    @classmethod
    def whole(cls, size: int) -> "Tiling":
        """One tile: the whole image at the backbone's resolution."""
        return cls(size, size, size)

    @property
    def offsets(self) -> list[tuple[int, int]]:
        """(row, column) of every tile's top-left pixel, row by row."""
        starts = _starts(self.working_size, self.tile, self.stride)
        return [(y, x) for y in starts for x in starts]

    @property
    def count(self) -> int:
        return len(self.offsets)

    def positions(self) -> torch.Tensor:
        """Tile centres as fractions of the image in [0, 1], float64 [T, 2] (the optional detector input)."""
        half, span = self.tile / 2, self.working_size
        return torch.tensor([[(y + half) / span, (x + half) / span] for y, x in self.offsets], dtype=torch.float64)

    def cut(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, W, W] images → [B·T, C, tile, tile] tiles, image by image, tiles in `offsets` order."""
        if images.shape[-1] != self.working_size or images.shape[-2] != self.working_size:
            raise ValueError(f"images must be {self.working_size}×{self.working_size}; got {tuple(images.shape[-2:])}")
        s = self.tile
        return torch.stack([images[:, :, y : y + s, x : x + s] for y, x in self.offsets], dim=1).flatten(0, 1)

    def blend(self, values: torch.Tensor) -> torch.Tensor:
        """Per-tile values [B, T] (constant over each tile) or [B, T, tile, tile] → maps [B, W, W]: every pixel
        the mean over the tiles that cover it."""
        B, s, W = values.shape[0], self.tile, self.working_size
        if values.ndim == 2:
            values = values[:, :, None, None].expand(B, self.count, s, s)
        total = torch.zeros((B, W, W), dtype=values.dtype)
        cover = torch.zeros((W, W), dtype=values.dtype)
        for t, (y, x) in enumerate(self.offsets):
            total[:, y : y + s, x : x + s] += values[:, t]
            cover[y : y + s, x : x + s] += 1
        return total / cover

    def to_dict(self) -> dict:
        return {"working_size": self.working_size, "tile": self.tile, "stride": self.stride}


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
