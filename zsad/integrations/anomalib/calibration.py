"""The conformal state of an anomalib model: calibration scores of normal images, and what follows from them.

Pure numpy on top of zsad's own formula and guards (zsad/detection/conformal.py, the map threshold and colour scale of
zsad/detection/maps.py); neither anomalib nor Lightning is needed here, so the arithmetic is tested on plain arrays.

* p-value of a new score s: (1 + #{calibration scores ≥ s}) / (n_cal + 1); flagged when p ≤ α (decided on integer counts).
* Image threshold: the k-th largest calibration score, k = ⌊α(n_cal + 1)⌋; an image is flagged exactly when its score is
  above it. k = 0 is refused, naming the calibration size α needs (⌈1/α⌉ − 1).
* Map threshold: the k-th largest of the calibration images' map maxima, so a normal image shows any predicted-mask pixel
  with probability at most α (the image guarantee applied to the map's maximum), as `zsad fit` outlines.
* Normalisation into [0, 1] (what anomalib's metrics and visualiser expect): zsad's colour scale (zsad/detection/maps.py)
  runs from a typical normal value (the calibration median) to as far above the threshold t as t is above it; with
  z = (x − t) / (t − median), the value is ½ + z / (2(1 + |z|)): the median goes to 0.25, t to 0.5 (slope 1 there on the colour
  scale, as anomalib's linear map), and nothing is clamped, so the order of scores is kept. anomalib's own normalisation clamps
  to [0, 1] and ties every score beyond its range; a logistic would tie every score beyond about 9 times t's distance from the
  median at 1.0 in float32, while this map's algebraic tail keeps scores apart up to about 10⁷ times that distance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from zsad.detection.conformal import check_rate, flag_rank, is_anomaly, min_calibration, p_values, rate_spread, threshold
from zsad.detection.maps import map_threshold
from zsad.errors import ConfigError


@dataclass(frozen=True)
class Calibration:
    """Scores of the normal calibration images (higher = more anomalous), and per image the maximum and median of its
    anomaly map (None for models without maps) and the largest map value of all of them."""

    scores: np.ndarray
    map_maxima: Optional[np.ndarray] = None
    map_medians: Optional[np.ndarray] = None
    map_top: Optional[float] = None

    def __post_init__(self) -> None:
        scores = np.asarray(self.scores, dtype=np.float64).ravel()
        if not np.isfinite(scores).all():
            raise ConfigError(f"{int((~np.isfinite(scores)).sum())} calibration scores are not finite; the model's scores on normal "
                              "validation images must be numbers.")
        object.__setattr__(self, "scores", scores)
        if self.map_maxima is not None:
            maxima = np.asarray(self.map_maxima, dtype=np.float64).ravel()
            medians = np.asarray(self.map_medians, dtype=np.float64).ravel()
            if len(maxima) != len(scores) or len(medians) != len(scores):
                raise ValueError(f"{len(scores)} calibration scores but {len(maxima)} map maxima and {len(medians)} map medians")
            object.__setattr__(self, "map_maxima", maxima)
            object.__setattr__(self, "map_medians", medians)

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def has_maps(self) -> bool:
        return self.map_maxima is not None and self.n > 0

    def require_rate(self, alpha: float) -> float:
        """α, checked: a number in (0, 1) that this calibration can reach (k = ⌊α(n_cal + 1)⌋ ≥ 1)."""
        alpha = check_rate(alpha)
        if self.n == 0:
            raise ConfigError("The conformal post-processor has no calibration scores: validate the model on normal images it was not fitted on "
                              "(Engine.fit or Engine.validate with a datamodule whose val_split_mode is 'from_train' or 'from_test'), or load a "
                              "checkpoint saved after that.")
        if flag_rank(alpha, self.n) == 0:
            raise ConfigError(f"A false-alarm rate of {alpha:g} needs at least {min_calibration(alpha)} normal calibration images (⌈1/α⌉ − 1) and "
                              f"this calibration has {self.n}, so no image could ever be flagged (k = ⌊α(n_cal + 1)⌋ = 0). Give the validation "
                              f"set more normal images (a larger val_split_ratio), or choose α ≥ {1 / (self.n + 1):.4g}.")
        return alpha

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """Split-conformal p-values of new scores (zsad.detection.conformal.p_values)."""
        return p_values(self.scores, scores)

    def decide(self, scores: np.ndarray, alpha: float) -> np.ndarray:
        """p ≤ α for every score, on integer counts (zsad.detection.conformal.is_anomaly); refuses an unreachable α."""
        return is_anomaly(self.scores, scores, self.require_rate(alpha))

    def image_threshold(self, alpha: float) -> float:
        """The score above which an image is flagged: the k-th largest calibration score."""
        return threshold(self.scores, self.require_rate(alpha))

    def map_threshold(self, alpha: float) -> float:
        """The map value above which a pixel is in the predicted mask: the k-th largest calibration map maximum."""
        if not self.has_maps:
            raise ConfigError("This calibration holds no anomaly maps (the model gave none on the validation images), so no map threshold exists.")
        return map_threshold(self.map_maxima, self.require_rate(alpha))

    def image_scale(self, alpha: float) -> tuple[float, float]:
        """(threshold, unit) of image scores: the image threshold and its distance above the median calibration score."""
        return _scale(self.image_threshold(alpha), float(np.median(self.scores)), float(self.scores.max() - self.scores.min()))

    def map_scale(self, alpha: float) -> tuple[float, float]:
        """(threshold, unit) of maps: the map threshold and its distance above the median of the calibration maps' medians."""
        return _scale(self.map_threshold(alpha), float(np.median(self.map_medians)), float(self.map_top - self.map_medians.min()))


def _scale(thresh: float, typical: float, spread: float) -> tuple[float, float]:
    """(threshold, unit) for `normalise`; where the threshold is not above the median (α ≥ ½, tied scores) the unit is the
    calibration's spread instead, so the scale keeps a width."""
    unit = thresh - typical if thresh > typical else spread if spread > 0 else 1.0
    return thresh, unit


def normalise(values: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Values into (0, 1), order kept: z = (x − threshold) / unit ↦ ½ + z / (2(1 + |z|)).

    On zsad's colour scale (zsad.detection.maps.colour_scale: from the typical value to as far above the threshold as the
    threshold is above it) z runs from −1 to 1, so this is that scale with a slope-1 middle and tails that never clamp."""
    thresh, unit = scale
    z = (np.asarray(values, dtype=np.float64) - thresh) / unit
    return 0.5 + z / (2.0 * (1.0 + np.abs(z)))


def card_text(calibration: Calibration, alpha: float, source: str = "", excluded: int = 0, model: str = "") -> str:
    """The conformal post-processor's card: what the rate means for this calibration (zsad/detection/card.py's wording)."""
    alpha = check_rate(alpha)
    n = calibration.n
    spread = rate_spread(alpha, n)
    lines = [f"# zsad conformal threshold{f' for {model}' if model else ''}", "", "| | |", "|---|---|",
             f"| calibration | **{n}** normal validation images{f' ({source})' if source else ''}; {excluded} images labelled anomalous "
             "were left out |",
             f"| target false-alarm rate | α = {alpha:g} |"]
    if spread.k == 0:
        lines += [f"| threshold | **no rate**: α = {alpha:g} needs at least {min_calibration(alpha)} calibration images (⌈1/α⌉ − 1) and there "
                  f"are {n}; decisions are refused (smallest possible p-value {1 / (n + 1):.3g}) |", "",
                  f"**No rate.** With {n} calibration images no false-alarm rate below 1/(n_cal + 1) = {1 / (n + 1):.3g} can be reached. "
                  "Validate on more normal images, or choose a larger α.", ""]
        return "\n".join(lines)
    lines.append(f"| threshold | an image is flagged when its score exceeds {calibration.image_threshold(alpha):.6g}, the {spread.k}-th largest "
                 "calibration score (p-value ≤ α); `pred_score` puts that threshold at 0.5 |")
    if calibration.has_maps:
        lines.append(f"| map | pixels above {calibration.map_threshold(alpha):.6g} form `pred_mask`: the {spread.k}-th largest of the {n} calibration "
                     "maps' maxima, so a normal image shows any mask pixel with probability at most α; `anomaly_map` puts it at 0.5 |")
    lines += ["", "**What the rate means.** For a new normal image that is exchangeable with the calibration images (same source, no drift), "
              f"the chance of a false alarm is at most α = {alpha:g}, on average over calibration sets. For this one calibration set, "
              f"{spread.sentence()}. It does not hold when the normal images change (lighting, camera, product variant): calibrate again then. "
              f"p-values are multiples of 1/(n_cal + 1) = {1 / (n + 1):.3g}.", ""]
    return "\n".join(lines)
