"""Offline datasets made from nothing but this package and scikit-learn's bundled files.

Every set is deterministic from (name, split, seed). Generated sets draw `train` and `test`
independently; sets cut from real photographs take the two splits from disjoint parts of them.
Sources and licences:
* `digits`: scikit-learn's copy of the UCI Optical Recognition of Handwritten Digits test set
  (1,797 real 8×8 digits written by 43 people; CC BY 4.0). Split 2:1 by a fixed permutation.
* `photos`, `scenes`, `materials`, `cells`, `documents`, `space`, `faces`: real photographs that
  scikit-learn and scikit-image ship, cropped so that the splits never share a pixel
  (`zsad/data/package_images.py`, with sources and licences).
* `shapes`, `gradients`, `clouds`, `gratings`, `noise`: generated here (no licence needed).
"""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from zsad.data.package_images import PACKAGE_SETS
from zsad.errors import ConfigError, UnknownNameError

NATIVE_SIZE = 32
DEFAULT_COUNT = {"train": 1000, "test": 500}


def _rng(name: str, split: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{name}/{split}/{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _colors(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3))


def make_shapes(n: int, rng: np.random.Generator, size: int = NATIVE_SIZE) -> np.ndarray:
    """1–3 filled ellipses/rectangles/triangles on a flat background."""
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        img = Image.new("RGB", (size, size), tuple(int(c) for c in _colors(rng, 1)[0]))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = rng.uniform(-0.1, 0.7, 2) * size
            w, h = rng.uniform(0.25, 0.6, 2) * size
            color = tuple(int(c) for c in _colors(rng, 1)[0])
            kind = int(rng.integers(0, 3))
            if kind == 0:
                draw.ellipse([x0, y0, x0 + w, y0 + h], fill=color)
            elif kind == 1:
                draw.rectangle([x0, y0, x0 + w, y0 + h], fill=color)
            else:
                draw.polygon([(x0, y0 + h), (x0 + w, y0 + h), (x0 + w / 2, y0)], fill=color)
        out[i] = np.asarray(img)
    return out


def make_gradients(n: int, rng: np.random.Generator, size: int = NATIVE_SIZE) -> np.ndarray:
    """Linear colour ramps between two random colours at a random angle."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    theta = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    ramp = xx[None] * np.cos(theta) + yy[None] * np.sin(theta)
    ramp = (ramp - ramp.min(axis=(1, 2), keepdims=True)) / np.ptp(ramp, axis=(1, 2), keepdims=True)
    a, b = _colors(rng, n)[:, None, None, :], _colors(rng, n)[:, None, None, :]
    return (a + (b - a) * ramp[..., None]).round().astype(np.uint8)


def _smooth_field(rng: np.random.Generator, n: int, size: int, cells: np.ndarray) -> np.ndarray:
    """Bicubic upsampling of coarse random grids: smooth random fields in [0, 1]."""
    out = np.empty((n, size, size, 3), np.float64)
    for i in range(n):
        c = int(cells[i])
        coarse = rng.uniform(0, 255, (c, c, 3)).astype(np.uint8)
        out[i] = np.asarray(Image.fromarray(coarse, "RGB").resize((size, size), Image.BICUBIC)) / 255.0
    return out


def make_clouds(n: int, rng: np.random.Generator, size: int = NATIVE_SIZE) -> np.ndarray:
    """Smooth colour clouds (coarse noise upsampled), a soft, texture-free shift."""
    return (_smooth_field(rng, n, size, rng.integers(2, 6, n)) * 255).round().astype(np.uint8)


def make_gratings(n: int, rng: np.random.Generator, size: int = NATIVE_SIZE) -> np.ndarray:
    """Sinusoidal gratings and checkerboards in two random colours."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        freq = rng.uniform(0.08, 0.4)
        theta = rng.uniform(0, np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
        if rng.uniform() < 0.3:
            wave = np.sign(wave * np.sin(2 * np.pi * freq * (-xx * np.sin(theta) + yy * np.cos(theta)) + phase))
        t = (wave + 1) / 2
        a, b = _colors(rng, 2)
        out[i] = (a + (b - a) * t[..., None]).round().astype(np.uint8)
    return out


def make_noise(n: int, rng: np.random.Generator, size: int = NATIVE_SIZE) -> np.ndarray:
    """I.i.d. uniform pixel noise: the farthest possible shift."""
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def make_digits(split: str, seed: int) -> np.ndarray:
    """scikit-learn's 8×8 handwritten digits as grayscale uint8 (upscaled later by preprocessing)."""
    from sklearn.datasets import load_digits

    images = load_digits().images  # float 0..16
    order = np.random.default_rng(seed).permutation(len(images))
    cut = (2 * len(images)) // 3
    chosen = order[:cut] if split == "train" else order[cut:]
    return (images[chosen] * (255.0 / 16.0)).round().astype(np.uint8)[..., None]


GENERATED: dict[str, Callable[..., np.ndarray]] = {
    "shapes": make_shapes,
    "gradients": make_gradients,
    "clouds": make_clouds,
    "gratings": make_gratings,
    "noise": make_noise,
}
BUILTIN_NAMES = tuple(sorted([*GENERATED, *PACKAGE_SETS, "digits"]))


def make_builtin(name: str, split: str, count: int | None = None, seed: int = 0) -> np.ndarray:
    """The uint8 N×H×W×C images of built-in set `name` for `split` ('train' or 'test')."""
    if split not in DEFAULT_COUNT:
        raise ConfigError(f"Built-in set '{name}' has splits 'train' and 'test', not '{split}'.")
    if name == "digits":
        images = make_digits(split, seed)
        return images if count is None else images[:count]
    if name not in GENERATED and name not in PACKAGE_SETS:
        raise UnknownNameError(f"Unknown built-in set '{name}'. Known: {', '.join(BUILTIN_NAMES)}.")
    n = DEFAULT_COUNT[split] if count is None else int(count)
    if name in PACKAGE_SETS:
        return PACKAGE_SETS[name](n, _rng(name, split, seed), split, NATIVE_SIZE)
    return GENERATED[name](n, _rng(name, split, seed))
