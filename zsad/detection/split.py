"""Splitting normal images into a fit part and a calibration part by hashed name (docs/method.md §7).

The images are ordered by sha256 of their name (the path relative to the folder). The calibration part is
the n_cal = max(⌈0.2·n⌉, ⌈1/α⌉ − 1) images with the lowest hashes; the fit part is the rest, or, with
`shots`, the next N in hash order. Few-shot fits keep the same calibration set and its guarantee.

What holds when a folder changes (tests/test_conformal.py checks both directions): adding m images moves
at most m of the old calibration images to the fit part, and at most n_cal' − n_cal old fit images into
calibration (n_cal' the new calibration size); removing m images moves at most m old fit images into
calibration and at most n_cal − n_cal' old calibration images to the fit part. Full stability is impossible
with n_cal fixed by n: a new image whose hash is low enough takes a calibration place from an old one.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Optional, Sequence

from zsad.detection.conformal import calibration_size, check_rate, min_calibration
from zsad.errors import ConfigError

MIN_FIT_ROWS = 10  # the detector's model selection (5-fold CV) needs at least 10 feature rows


def name_hash(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


@dataclass(frozen=True)
class Split:
    """Positions (into the given names) of the calibration part and the fit part."""

    calibration: list[int]
    fit: list[int]
    rate_holds: bool = True  # the calibration part is large enough for the rate asked (⌈1/α⌉ − 1 images)


def split_normal(names: Sequence[str], alpha: float, shots: Optional[int] = None, tiles_per_image: int = 1, share: float = 0.2,
                 require_rate: bool = True) -> Split:
    """The calibration/fit split of `names`; too few images for the rate or for fitting is an error that
    names the numbers and what to do. Without `require_rate`, too few images for the rate shrink the
    calibration part to ⌈share·n⌉ instead (maps and thresholds still need one); `Split.rate_holds` says which."""
    alpha = check_rate(alpha)
    n = len(names)
    need_cal = min_calibration(alpha)
    n_cal = calibration_size(n, alpha, share)
    if not require_rate and n - n_cal < math.ceil(MIN_FIT_ROWS / tiles_per_image) + int(shots or 0):
        n_cal = max(1, math.ceil(share * n))
    min_fit = math.ceil(MIN_FIT_ROWS / tiles_per_image)
    if shots is not None and int(shots) < 1:
        raise ConfigError(f"--shots must be a positive number of images; got {shots}.")
    available = n - n_cal
    if available < min_fit or (shots is not None and int(shots) > available):
        wanted = max(min_fit, int(shots or 0))
        raise ConfigError(
            f"{n} normal images are too few: a false-alarm rate of {alpha:g} needs {need_cal} calibration images "
            f"(⌈1/α⌉ − 1; the calibration part is max(⌈{share:g}·n⌉, that) = {n_cal}), and the fit part needs at least {wanted} "
            f"image(s) ({tiles_per_image} tile(s) each, {MIN_FIT_ROWS} feature rows at least){'' if shots is None else f' for --shots {shots}'}. "
            f"Add normal images (at least {n_cal + wanted} in all), raise --false-alarm-rate, or fit on fewer shots."
        )
    order = sorted(range(n), key=lambda i: name_hash(names[i]))
    calibration = order[:n_cal]
    fit = order[n_cal:] if shots is None else order[n_cal : n_cal + int(shots)]
    return Split(sorted(calibration), sorted(fit), len(calibration) >= need_cal)
