"""Split-conformal decisions (docs/method.md §7): a false-alarm rate that holds.

Calibration images are normal images the detector was not fitted on. For a new score s,

    p = (1 + #{calibration scores ≥ s}) / (n_cal + 1),

and the image is flagged when p ≤ α. If the new image and the calibration images are exchangeable (normal
images from the same source), P(flag) ≤ α, marginally over the draw of the calibration set. For one fixed
calibration set the realised false-alarm rate is a random variable: it follows Beta(k, n_cal − k + 1) with
k = ⌊α(n_cal + 1)⌋ (the k-th largest calibration score is the threshold). None of this holds under drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from zsad.errors import ConfigError


def check_rate(alpha: float) -> float:
    """α as a float in (0, 1), or a clear error."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ConfigError(f"The false-alarm rate must be a number in (0, 1), e.g. 0.05; got {alpha!r}.") from None
    if not 0 < value < 1:
        raise ConfigError(f"The false-alarm rate must lie strictly between 0 and 1 (e.g. 0.05 for 5%); got {alpha}.")
    return value


def min_calibration(alpha: float) -> int:
    """The fewest calibration images with which a rate α can be reached at all: ⌈1/α⌉ − 1 (19 at 0.05, 99 at 0.01)."""
    return math.ceil(1 / check_rate(alpha) - 1e-12) - 1


def calibration_size(n_images: int, alpha: float, share: float = 0.2) -> int:
    """n_cal = max(⌈share·n⌉, ⌈1/α⌉ − 1)."""
    return max(math.ceil(share * n_images), min_calibration(alpha))


def p_values(calibration_scores: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(1 + #{cal ≥ s}) / (n_cal + 1) for every s in `scores` (exact, any scale, ties count as ≥)."""
    cal = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    s = np.asarray(scores, dtype=np.float64)
    at_least = len(cal) - np.searchsorted(cal, s, side="left")  # calibration scores ≥ s
    return (1.0 + at_least) / (len(cal) + 1.0)


def is_anomaly(calibration_scores: np.ndarray, scores: np.ndarray, alpha: float) -> np.ndarray:
    """p ≤ α for every score, decided on integer counts (#{cal ≥ s} < k) so that float rounding of p never flips it."""
    cal = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    at_least = len(cal) - np.searchsorted(cal, np.asarray(scores, dtype=np.float64), side="left")
    return at_least < flag_rank(alpha, len(cal))


def flag_rank(alpha: float, n_cal: int) -> int:
    """k = ⌊α(n_cal + 1)⌋: an image is flagged exactly when its score is above the k-th largest calibration score."""
    return int(math.floor(check_rate(alpha) * (n_cal + 1) + 1e-9))


def threshold(calibration_scores: np.ndarray, alpha: float) -> float:
    """The score above which p ≤ α: the k-th largest calibration score (+inf when k = 0: nothing can be flagged)."""
    cal = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    k = flag_rank(alpha, len(cal))
    return float("inf") if k == 0 else float(cal[len(cal) - k])


@dataclass(frozen=True)
class RateSpread:
    """How the realised false-alarm rate of one calibration set is distributed: Beta(k, n_cal − k + 1)."""

    alpha: float
    n_cal: int
    k: int
    mean: float
    q05: float
    q95: float

    def sentence(self) -> str:
        return (f"with {self.n_cal} calibration images the realised false-alarm rate of this calibration set follows "
                f"Beta({self.k}, {self.n_cal - self.k + 1}): mean {self.mean:.2%}, 90% of calibration sets give between "
                f"{self.q05:.2%} and {self.q95:.2%}")


def rate_spread(alpha: float, n_cal: int) -> RateSpread:
    """The distribution of the realised false-alarm rate over calibration sets of n_cal images."""
    from scipy.stats import beta

    k = flag_rank(alpha, n_cal)
    if k == 0:
        return RateSpread(alpha, n_cal, 0, 0.0, 0.0, 0.0)
    dist = beta(k, n_cal - k + 1)
    return RateSpread(alpha, n_cal, k, float(dist.mean()), float(dist.ppf(0.05)), float(dist.ppf(0.95)))
