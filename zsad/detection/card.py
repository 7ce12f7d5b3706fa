"""`card.md`: what a detector folder holds, in words a person reads once (docs/method.md §7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zsad.detection.conformal import rate_spread


def card_text(det: Any) -> str:
    """The card of a fitted AnomalyDetector."""
    info, recipe, tiling, maps = det.info, det.recipe, det.tiling, det.maps
    spread = rate_spread(det.false_alarm_rate, len(det.calibration))
    tiles = ("the whole image at the backbone's resolution" if tiling.count == 1 else
             f"{tiling.count} tiles of {tiling.tile} px every {tiling.stride} px over the image resized to {tiling.working_size} px")
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
        f"| scorer | `{recipe.scorer_name}` version {recipe.scorer_version}: {det.scorer.feature_names.__len__()} features per tile |",
        f"| tiles | {tiles}; {det.network_evaluations_per_image():,} network evaluations per image |",
        f"| detector | Gaussian mixture on the standardised tile features{' and tile positions' if det.tile_position else ''} "
        f"({det.detector.best_params_.get('gmm__n_components')} components, {det.detector.best_params_.get('gmm__covariance_type')} covariance, "
        "chosen by cross-validated likelihood) |",
        f"| image score | the {'maximum' if maps.aggregation == 'max' else f'mean of the top {maps.top_k:.0%}'} of the tile map (tile scores standardised "
        "by the fit tiles', blended) |",
        f"| target false-alarm rate | α = {det.false_alarm_rate:g} |",
        f"| threshold | an image is flagged when its score exceeds {det.threshold:.4g} (p-value ≤ α) |",
        f"| map | `{maps.combination}`; pixels above {maps.threshold:.4g} (the {1 - det.false_alarm_rate:.0%} quantile of the calibration "
        f"images' map values) are outlined; colour scale {maps.vmin:.3g} … {maps.vmax:.3g} |",
        "",
        "**What the rate means.** For a new normal image that is exchangeable with the calibration images (same source, no drift), "
        f"the chance of a false alarm is at most α = {det.false_alarm_rate:g}, on average over calibration sets. For this one calibration set, "
        f"{spread.sentence()}. It does not hold when the normal images change (lighting, camera, product variant): refit then.",
        "",
    ]
    return "\n".join(lines)


def write_card(folder: Path, det: Any) -> Path:
    path = folder / "card.md"
    path.write_text(card_text(det))
    return path
