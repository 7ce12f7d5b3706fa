"""`card.md`: what a detector folder holds, in words a person reads once (docs/method.md §7)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from zsad.detection.conformal import min_calibration, rate_spread
from zsad.scoring.detector import GMMDetector, describe_detector


def card_text(det: Any) -> str:
    """The card of a fitted AnomalyDetector."""
    info, recipe, tiling, maps = det.info, det.recipe, det.tiling, det.maps
    n_cal, alpha = det.calibration.n, det.false_alarm_rate
    spread = rate_spread(alpha, n_cal)
    tiles = ("the whole image at the backbone's resolution" if tiling.count == 1 else
             f"{tiling.count} tiles of {tiling.tile} px every {tiling.stride} px over the image resized to {tiling.height}×{tiling.width} px "
             f"({info.get('working_shape_reason', 'working shape')})")
    if spread.k == 0:
        decision = (f"| threshold | **no rate**: α = {alpha:g} needs at least {min_calibration(alpha)} calibration images (⌈1/α⌉ − 1) and this "
                    f"detector has {n_cal}, so no image can be flagged at α; p-values are still given (smallest possible {1 / (n_cal + 1):.3g}) |")
        outline = "no outline (no rate)"
        meaning = (f"**No rate.** With {n_cal} calibration images no false-alarm rate below 1/(n_cal + 1) = {1 / (n_cal + 1):.3g} can be reached. "
                   f"Score with `--false-alarm-rate {math.ceil(1e4 / (n_cal + 1)) / 1e4:g}` or more, or refit with more normal images.")
    else:
        decision = f"| threshold | an image is flagged when its score exceeds {det.threshold:.4g} (p-value ≤ α) |"
        outline = (f"pixels above {maps.threshold:.4g} are outlined: the {spread.k}-th largest of the {n_cal} calibration images' map maxima, so a "
                   f"normal image shows any outline with probability at most α")
        meaning = ("**What the rate means.** For a new normal image that is exchangeable with the calibration images (same source, no drift), "
                   f"the chance of a false alarm is at most α = {alpha:g}, on average over calibration sets. For this one calibration set, "
                   f"{spread.sentence()}. It does not hold when the normal images change (lighting, camera, product variant): refit then. "
                   f"p-values are multiples of 1/(n_cal + 1) = {1 / (n_cal + 1):.3g}: the smallest one says only that the score is above every "
                   "calibration score, so flagged images with that p-value are ranked by their score, not their p-value.")
    shots = f" (--shots {info['shots']})" if info.get("shots") else ""
    lines = [
        "# zsad detector",
        "",
        f"Fitted on **{info.get('n_fit')}** normal images{shots} from `{info.get('source')}` and calibrated on **{info.get('n_calibration')}** others "
        f"({info.get('n_normal')} in all, split by hashed file name) in {info.get('fit_seconds')} s.",
        "",
        "| | |",
        "|---|---|",
        f"| backbone | `{info.get('backbone')}` (sha256 `{recipe.weights_sha256[:16]}…`) |",
        f"| scorer | `{recipe.scorer_name}` version {recipe.scorer_version} ({_options_text(det.scorer.options())}): "
        f"{len(det.scorer.feature_names)} features per tile |",
        f"| tiles | {tiles}; {det.network_evaluations_per_image():,} network evaluations per image |",
        detector_line(det),
        f"| image score | the {'maximum' if maps.aggregation == 'max' else f'mean of the top {maps.top_k:.0%}'} of the tile map (tile scores standardised "
        "by the fit tiles', blended) |",
        f"| target false-alarm rate | α = {alpha:g} |",
        decision,
        f"| map | `{maps.combination}`, tile scores blended `{maps.blend}`; {outline}; colour scale {maps.vmin:.3g} … {maps.vmax:.3g} |",
        "",
        meaning,
        "",
    ]
    return "\n".join(lines)


def detector_line(det: Any) -> str:
    """The card's detector row: what was fitted on the tile features, in words."""
    if isinstance(det.detector, GMMDetector):
        p = det.detector.best_params_
        return (f"| detector | Gaussian mixture on the standardised tile features{' and tile positions' if det.tile_position else ''} "
                f"({p.get('gmm__n_components')} components, {p.get('gmm__covariance_type')} covariance, chosen by cross-validated likelihood) |")
    return f"| detector | {describe_detector(det.detector)}, on the tile features |"


def write_card(folder: Path, det: Any) -> Path:
    path = folder / "card.md"
    path.write_text(card_text(det))
    return path


def _options_text(options: dict) -> str:
    """The scorer's own top-level options (steps, levels, …) as a person reads them; nested parts are in recipe.json."""
    return ", ".join(f"{k} {v}" for k, v in options.items() if k != "name" and not isinstance(v, dict)) or "no options"
