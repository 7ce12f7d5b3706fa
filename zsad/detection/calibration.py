"""The conformal state that calibration on held-out normal images fixes, for zsad's detectors and for any anomalib model.

One object, pure numpy, on top of the formulas of zsad/detection/conformal.py and zsad/detection/maps.py:

* p-value of a new score s: (1 + #{calibration scores ≥ s}) / (n_cal + 1); flagged when p ≤ α (decided on integer counts).
* Image threshold: the k-th largest calibration score, k = ⌊α(n_cal + 1)⌋; an image is flagged exactly when its score is
  above it. Deciding at a rate with k = 0 is refused, naming the calibration size α needs (⌈1/α⌉ − 1).
* Map (outline) threshold: the k-th largest of the calibration images' map maxima, so a normal image shows any outline
  with probability at most α (the image guarantee applied to the map's maximum).
* Colour scale of maps: from a typical normal value (the median of the calibration maps' medians) to as far above the
  map threshold as the threshold is above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from zsad.detection.conformal import check_rate, flag_rank, is_anomaly, min_calibration, p_values, threshold
from zsad.detection.maps import colour_scale, map_threshold
from zsad.errors import ConfigError


@dataclass(frozen=True, eq=False)  # arrays: compare the fields themselves, not two objects
class Calibration:
    """The target false-alarm rate α, the calibration images' scores (higher = more anomalous) and, for models with maps,
    each image's map maximum, the typical map value (median of the maps' medians) and quantiles of all map values (bin
    edges of streamed pixel metrics). Methods take α, the fitted one when None."""

    false_alarm_rate: float
    scores: np.ndarray
    map_maxima: Optional[np.ndarray] = None
    map_typical: Optional[float] = None
    map_quantiles: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "false_alarm_rate", check_rate(self.false_alarm_rate))
        scores = np.asarray(self.scores, dtype=np.float64).ravel()
        object.__setattr__(self, "scores", scores)
        if self.map_maxima is not None:
            maxima = np.asarray(self.map_maxima, dtype=np.float64).ravel()
            if len(maxima) != len(scores):
                raise ValueError(f"{len(scores)} calibration scores but {len(maxima)} map maxima")
            object.__setattr__(self, "map_maxima", maxima)
            if self.map_typical is None:
                raise ValueError("calibration map maxima without the typical map value (map_typical)")

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def has_maps(self) -> bool:
        return self.map_maxima is not None and self.n > 0

    @property
    def map_top(self) -> float:
        """The largest value of all calibration maps."""
        return float(self.map_maxima.max())

    def rate(self, alpha: Optional[float] = None) -> float:
        """α checked as a number in (0, 1); the fitted rate when None."""
        return self.false_alarm_rate if alpha is None else check_rate(alpha)

    def reaches(self, alpha: Optional[float] = None) -> bool:
        """Whether this calibration can flag anything at α (k = ⌊α(n_cal + 1)⌋ ≥ 1)."""
        return self.n > 0 and flag_rank(self.rate(alpha), self.n) >= 1

    def require_rate(self, alpha: Optional[float] = None, remedy: str = "") -> float:
        """α, checked: a rate this calibration can reach, or an error that names the calibration size it needs and
        `remedy`, the caller's way to get there (its own option names)."""
        alpha = self.rate(alpha)
        if self.n == 0:
            raise ConfigError("This calibration holds no scores, so nothing can be decided: calibrate on normal images the model was not fitted on.")
        if not self.reaches(alpha):
            smallest = math.ceil(1e4 / (self.n + 1)) / 1e4
            remedy = remedy or "Choose α ≥ {smallest:g} (1/(n_cal + 1)), or calibrate on more normal images."
            raise ConfigError(f"A false-alarm rate of {alpha:g} needs at least {min_calibration(alpha)} normal calibration images (⌈1/α⌉ − 1) "
                              f"and this calibration has {self.n}, so no image could ever be flagged (k = ⌊α(n_cal + 1)⌋ = 0). "
                              + remedy.format(smallest=smallest))
        return alpha

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """Split-conformal p-values of new scores (zsad.detection.conformal.p_values)."""
        return p_values(self.scores, scores)

    def decide(self, scores: np.ndarray, alpha: Optional[float] = None, remedy: str = "") -> np.ndarray:
        """p ≤ α for every score, on integer counts (zsad.detection.conformal.is_anomaly); refuses an unreachable α."""
        return is_anomaly(self.scores, scores, self.require_rate(alpha, remedy))

    def image_threshold(self, alpha: Optional[float] = None) -> float:
        """The score above which an image is flagged: the k-th largest calibration score (+inf when k = 0)."""
        return threshold(self.scores, self.rate(alpha))

    def map_threshold(self, alpha: Optional[float] = None) -> float:
        """The map value above which a pixel is outlined: the k-th largest calibration map maximum (+inf when k = 0)."""
        if not self.has_maps:
            raise ConfigError("This calibration holds no anomaly maps (the model gave none on the calibration images), so no map threshold exists.")
        return map_threshold(self.map_maxima, self.rate(alpha))

    def colour_scale(self, alpha: Optional[float] = None) -> tuple[float, float]:
        """(vmin, vmax) of map overlays at α: the typical value to as far above the map threshold as it is above that."""
        return colour_scale(float(self.map_typical), self.map_threshold(alpha), self.map_top)
