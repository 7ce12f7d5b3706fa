"""The working shape: what size the images are brought to before they are cut into tiles (docs/method.md §7).

One rule for every command (`zsad fit`, `zsad test`, the Python API; `zsad score` uses the detector's):

* the longer side is `--working-size` when given, else the median longer side of the fit images, capped at
  `MAX_WORKING_SIZE` and never below one tile: images are never upsampled beyond their own resolution by default;
* the shorter side keeps the images' median aspect ratio (never below one tile), so a 1.5:1 VisA image or a
  line-scan strip is tiled over both axes instead of being squashed into a square;
* a working shape of one tile is the plain scorer on the whole image.

Images whose size or aspect ratio differs from the working shape are resized to it all the same (a batch needs
one shape); `WorkingShape.notes` says how many, so nothing is changed silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from zsad.data.base import FileSource
from zsad.detection.inputs import Images, image_size, small_image_note
from zsad.errors import ConfigError

MAX_WORKING_SIZE = 256  # the default cap of the longer side: 15×15 tiles of 32 px at a stride of 16
ASPECT_TOLERANCE = 0.05  # an image whose aspect ratio differs by more than 5% from the working shape's is named in a note


@dataclass(frozen=True)
class WorkingShape:
    """(height, width) of the working shape, why it was chosen, and notes on images that are resized a lot."""

    height: int
    width: int
    reason: str
    notes: list[str] = field(default_factory=list)


def image_sizes(images: Images) -> list[tuple[int, int]]:
    """(height, width) of every image; files are read by their header only."""
    if isinstance(images.source, FileSource):
        return [image_size(path) for path in images.source.files]
    return [image_size(images.source.load(i)) for i in range(len(images))]


def choose_working_shape(sizes: Sequence[tuple[int, int]], tile: int, working_size: Optional[int] = None,
                         names: Optional[Sequence[str]] = None, tile_stride: Optional[int] = None) -> WorkingShape:
    """The working shape of images of these (height, width) sizes for tiles of `tile` px (see the module docstring)."""
    if not sizes:
        raise ConfigError("No images to choose a working size from.")
    if working_size is not None and int(working_size) < tile:
        raise ConfigError(f"--working-size {working_size} is smaller than one tile ({tile} px, the backbone's resolution). Use --working-size {tile} or more.")
    h = np.array([s[0] for s in sizes], dtype=np.float64)
    w = np.array([s[1] for s in sizes], dtype=np.float64)
    longer, shorter = np.maximum(h, w), np.minimum(h, w)
    median_long = int(np.median(longer))
    if working_size is not None:
        long_side = int(working_size)
        reason = f"--working-size {long_side}"
    elif median_long > MAX_WORKING_SIZE:
        long_side = MAX_WORKING_SIZE
        reason = f"the images' median longer side ({median_long} px) capped at {MAX_WORKING_SIZE} px (--working-size to change it)"
    elif median_long < tile:
        long_side = tile
        reason = f"one tile ({tile} px): the images' median longer side ({median_long} px) is smaller than a tile, so they are upsampled"
    else:
        long_side = median_long
        reason = f"the images' own size (median longer side {median_long} px)"
    aspect = float(np.median(shorter / longer))
    short_side = max(tile, min(long_side, int(round(long_side * aspect))))
    landscape = float(np.median(w / h)) >= 1.0
    height, width = (short_side, long_side) if landscape else (long_side, short_side)
    notes = []
    target = height / width
    off = np.abs(h / w - target) / target > ASPECT_TOLERANCE
    if off.any():
        notes.append(f"{int(off.sum())} of {len(sizes)} images have another aspect ratio than the working shape {height}×{width}: they are resized "
                     "to it (stretched).")
    small = ((h < height) | (w < width)) & (shorter >= tile)  # those smaller than a tile get their own note below
    if small.any():
        notes.append(f"{int(small.sum())} of {len(sizes)} images are smaller than the working shape {height}×{width} px: they are upsampled.")
    tiny = small_image_note(names or [f"image {i}" for i in range(len(sizes))], sizes, (height, width), tile)
    if tiny:
        notes.append(tiny)
    return WorkingShape(height, width, reason, notes)
