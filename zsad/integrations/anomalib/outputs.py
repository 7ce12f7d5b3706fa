"""What anomalib reads from the conformal state (zsad.detection.calibration.Calibration): image scores and maps
normalised into [0, 1], and the post-processor's card.

Normalisation into [0, 1] (what anomalib's metrics and visualiser expect): zsad's colour scale (zsad/detection/maps.py)
runs from a typical normal value (the calibration median) to as far above the threshold t as t is above it; with
z = (x − t) / (t − median), the value is ½ + z / (2(1 + |z|)): the median goes to 0.25, t to 0.5 (slope 1 there on the colour
scale, as anomalib's linear map), and nothing is clamped, so the order of scores is kept. anomalib's own normalisation clamps
to [0, 1] and ties every score beyond its range; a logistic would tie every score beyond about 9 times t's distance from the
median at 1.0 in float32, while this map's algebraic tail keeps scores apart up to about 10⁷ times that distance.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from zsad.detection.calibration import Calibration
from zsad.detection.conformal import min_calibration, rate_spread


def image_scale(calibration: Calibration, alpha: Optional[float] = None) -> tuple[float, float]:
    """(threshold, unit) of image scores: the image threshold and its distance above the median calibration score."""
    scores, alpha = calibration.scores, calibration.require_rate(alpha)
    return _scale(calibration.image_threshold(alpha), float(np.median(scores)), float(scores.max() - scores.min()))


def map_scale(calibration: Calibration, alpha: Optional[float] = None) -> tuple[float, float]:
    """(threshold, unit) of maps: the map threshold and its distance above the typical calibration map value."""
    alpha = calibration.require_rate(alpha)
    threshold = calibration.map_threshold(alpha)  # refuses a calibration without maps
    typical = float(calibration.map_typical)
    return _scale(threshold, typical, calibration.map_top - typical)


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


def card_text(calibration: Calibration, source: str = "", excluded: int = 0, model: str = "") -> str:
    """The conformal post-processor's card: what its rate means for this calibration (zsad/detection/card.py's wording)."""
    alpha, n = calibration.false_alarm_rate, calibration.n
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
