"""`zsad fit NORMAL_DIR -o DETECTOR_DIR`: the checks that come before any work, the fit, the folder, the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from zsad.detection.conformal import check_rate, rate_spread
from zsad.detection.inputs import as_images
from zsad.detection.model import AnomalyDetector
from zsad.detection.settings import DetectorSettings
from zsad.errors import ConfigError


def check_output(normal_dir: Path, out: Path, force: bool) -> None:
    """The detector folder must not be inside the input (a later fit would read it as images) and is not
    replaced without --force (nothing is computed before this is known)."""
    if normal_dir.is_dir() and out.resolve().is_relative_to(normal_dir.resolve()):
        raise ConfigError(f"The detector folder {out} is inside the input folder {normal_dir}: a later run would read its files as images. "
                          "Choose a folder outside it (-o).")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is a file, not a folder. Choose another path for -o.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"{out} already exists and is not empty. Choose another folder, or pass --force to replace it.")


def fit_folder(normal_dir: str, out: str, force: bool = False, backbone: str = "diffpath-celeba32", settings: Optional[DetectorSettings] = None,
               **options: Any) -> tuple[AnomalyDetector, list[str]]:
    """Fit on the images under `normal_dir`, write the detector folder `out`; returns the detector and the summary lines.
    `settings` and keywords as `AnomalyDetector.fit` takes them."""
    settings = (settings or DetectorSettings()).replace(**options)
    check_rate(settings.false_alarm_rate)
    folder, target = Path(normal_dir), Path(out)
    check_output(folder, target, force)
    as_images(folder)  # an empty or missing folder is an error before the backbone is loaded
    det = AnomalyDetector.fit(folder, backbone=backbone, settings=settings)
    det.save(target, force=force)
    return det, summary_lines(det, target)


def summary_lines(det: AnomalyDetector, folder: Path) -> list[str]:
    info, n_cal = det.info, det.calibration.n
    spread = rate_spread(det.false_alarm_rate, n_cal)
    return [
        "── summary " + "─" * 60,
        f"fitted:    {info['n_fit']} normal images ({det.scorer.name}, {det.tiling.count} tile(s) of {det.tiling.tile} px per image at "
        f"{det.tiling.height}×{det.tiling.width} px, {det.network_evaluations_per_image():,} network evaluations per image) in {info['fit_seconds']:.1f} s",
        f"calibrated on {n_cal} other normal images: images scoring above {det.threshold:.4g} are flagged "
        f"(target false-alarm rate {det.false_alarm_rate:g})",
        f"           {spread.sentence()}",
        f"           p-values are multiples of 1/{n_cal + 1}: the smallest, {1 / (n_cal + 1):.3g}, only says a score is above every calibration score",
        f"detector:  {folder}/ (card.md says what it is) · score a folder with: zsad score DIR --detector {folder}",
    ]
