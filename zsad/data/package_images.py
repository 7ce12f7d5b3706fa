"""Real images that installed packages ship (scikit-learn, scikit-image): offline sets for a
real-image benchmark, with fit (`train`) and `test` splits that never share a pixel.

Crop-based sets cut each source photograph into a 4×4 checkerboard of blocks; `train` crops come
from the dark squares and `test` crops from the light ones, and a crop never leaves its block. Two
crops of different splits therefore never overlap (independent random crops of one photograph
would put near-copies of the same pixels on both sides of an ID fit/test split and inflate AUROC).

Sources (as the packages' documentation states them):
* scikit-learn `load_sample_images`: `china.jpg`, `flower.jpg` (Flickr, CC BY 2.0).
* scikit-image `skimage.data`: astronaut (NASA, public domain), chelsea (cat, CC0), coffee (CC0),
  rocket (SpaceX, CC0), stereo_motorcycle (Middlebury, free use), brick / grass / gravel
  (CC0 textures), immunohistochemistry (CC0), text and page (public domain), hubble_deep_field
  (NASA, public domain), lfw_subset (Labeled Faces in the Wild, 100 faces, 25×25 greyscale).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from zsad.errors import ConfigError

GRID = 4  # blocks per side of each source image


def _skimage():
    try:
        import skimage.data
    except ImportError:  # pragma: no cover - a dependency; only a broken install lands here
        raise ConfigError("This built-in set reads images that scikit-image ships; install it with "
                          "`pip install scikit-image` (it is a zsad dependency; `make install` does it).") from None
    return skimage.data


def block_crops(sources: list[np.ndarray], n: int, rng: np.random.Generator, split: str, size: int,
                min_side: int = 24, max_side: int = 128, flip: bool = False, mode: str = "RGB") -> np.ndarray:
    """`n` square crops resized to `size`, each inside one checkerboard block of one source
    (`train`: blocks with even i+j, `test`: odd), of side uniform in [min_side, min(max_side, block)];
    `mode` "L" (greyscale, N×size×size×1) or "RGB" (N×size×size×3), whatever the sources are."""
    parity = {"train": 0, "test": 1}[split]
    blocks = []
    for s, img in enumerate(sources):
        bh, bw = img.shape[0] // GRID, img.shape[1] // GRID
        blocks += [(s, i * bh, j * bw, bh, bw) for i in range(GRID) for j in range(GRID) if (i + j) % 2 == parity]
    channels = 1 if mode == "L" else 3
    out = np.empty((n, size, size, channels), np.uint8)
    for k in range(n):
        s, y0, x0, bh, bw = blocks[int(rng.integers(len(blocks)))]
        hi = min(max_side, bh, bw)
        side = int(rng.integers(min(min_side, hi), hi + 1))
        y = y0 + int(rng.integers(0, bh - side + 1))
        x = x0 + int(rng.integers(0, bw - side + 1))
        crop = Image.fromarray(sources[s][y : y + side, x : x + side]).convert(mode)
        crop = crop.resize((size, size), Image.BILINEAR)
        if flip and rng.uniform() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        arr = np.asarray(crop)
        out[k] = arr[..., None] if channels == 1 else arr
    return out


def _cropped(load_sources: Callable[[], list[np.ndarray]], **crop_options) -> Callable[..., np.ndarray]:
    def make(n: int, rng: np.random.Generator, split: str, size: int) -> np.ndarray:
        return block_crops(load_sources(), n, rng, split, size, **crop_options)

    return make


def _sklearn_photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return list(load_sample_images().images)


def _scenes() -> list[np.ndarray]:
    d = _skimage()
    return [d.astronaut(), d.chelsea(), d.coffee(), d.rocket(), d.stereo_motorcycle()[0]]


def _materials() -> list[np.ndarray]:
    d = _skimage()
    return [d.brick(), d.grass(), d.gravel()]


def _cells() -> list[np.ndarray]:
    return [_skimage().immunohistochemistry()]


def _documents() -> list[np.ndarray]:
    d = _skimage()
    return [d.text(), d.page()]


def _space() -> list[np.ndarray]:
    return [_skimage().hubble_deep_field()]


FACES_FIT = 60  # LFW subset: faces 0–59 are the fit split, 60–99 the test split (different photographs)


def make_faces(n: int, rng: np.random.Generator, split: str, size: int) -> np.ndarray:
    """The 100 LFW faces of scikit-image's `lfw_subset` (25×25 greyscale) in a seeded order, split by face:
    fit = faces 0–59 and their mirror images (120), test = faces 60–99 as they are (40; no mirrors, so
    test images are independent). A `count` above that gives what exists: there are no more faces."""
    faces = _skimage().lfw_subset()[:100]
    chosen = np.concatenate([faces[:FACES_FIT], faces[:FACES_FIT, :, ::-1]]) if split == "train" else faces[FACES_FIT:]
    picked = chosen[rng.permutation(len(chosen))][:n]
    out = np.empty((len(picked), size, size, 1), np.uint8)
    for k, face in enumerate(picked):
        img = Image.fromarray((face * 255).round().astype(np.uint8), "L").resize((size, size), Image.BILINEAR)
        out[k, ..., 0] = np.asarray(img)
    return out


# name → make(n, rng, split, size); the photos set is the demo's, the others are new with the 32 px benchmark.
PACKAGE_SETS: dict[str, Callable[..., np.ndarray]] = {
    "photos": _cropped(_sklearn_photos),
    "scenes": _cropped(_scenes, min_side=32, flip=True),
    "materials": _cropped(_materials, mode="L"),
    "cells": _cropped(_cells),
    "documents": _cropped(_documents, mode="L"),
    "space": _cropped(_space),
    "faces": make_faces,
}
