"""`zsad score DIR --detector D`: one CSV row per image (file, anomaly_score, p_value, is_anomaly, features),
overlays and a contact sheet, streamed to disk batch by batch so memory stays flat with the folder's size.

D is a folder written by `zsad fit` (p-values and decisions at its false-alarm rate, or `--false-alarm-rate`)
or a prefix written by `zsad evaluate` (no calibration: empty p_value and is_anomaly columns, and the
benchmark's exact per-image scores)."""

from __future__ import annotations

import csv
import heapq
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from zsad.detection.inputs import as_images
from zsad.detection.maps import upsample
from zsad.detection.model import AnomalyDetector
from zsad.detection.overlays import ContactSheet, OverlayStyle, overlay, overlay_style
from zsad.errors import ConfigError
from zsad.utils.console import say


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def output_paths(images_dir: Path, out: Optional[str]) -> tuple[Path, Path]:
    """(CSV, overlay folder): `--out` is the CSV path or a folder (default outputs/score/<DIR name>/); overlays go to
    heatmaps/ beside the CSV. Neither may be inside the input folder."""
    if out is None:
        csv_path = Path("outputs") / "score" / images_dir.resolve().name / "scores.csv"
    else:
        csv_path = Path(out) if Path(out).suffix.lower() == ".csv" else Path(out) / "scores.csv"
    heat = csv_path.parent / "heatmaps"
    for label, target in (("output", csv_path), ("overlay folder", heat)):
        if images_dir.is_dir() and _inside(target, images_dir):
            raise ConfigError(f"The {label} {target} is inside the input folder {images_dir}: a later run would read its files as inputs. "
                              "Choose a path outside it (--out).")
    return csv_path, heat


@dataclass
class ScoreSummary:
    """What `zsad score` tells a person at the end."""

    csv: Path
    n: int = 0
    flagged: Optional[int] = None
    false_alarm_rate: Optional[float] = None
    top: list = field(default_factory=list)  # (score, name, p_value) of the most anomalous, highest first
    overlays: Optional[Path] = None
    contact_sheet: Optional[Path] = None
    seconds: float = 0.0
    no_p_value_reason: Optional[str] = None
    n_calibration: Optional[int] = None

    def lines(self) -> list[str]:
        out = ["── summary " + "─" * 60, f"scored:    {self.n} images in {self.seconds:.1f} s → {self.csv}"]
        if self.flagged is not None:
            out.append(f"flagged:   {self.flagged} of {self.n} at a false-alarm rate of {self.false_alarm_rate:g} (p-value ≤ α)")
            smallest = 1 / (self.n_calibration + 1)
            out.append(f"p-values:  multiples of 1/(n_cal + 1) with {self.n_calibration} calibration images; p = {smallest:.3g} (the smallest) only says "
                       "the score is above every calibration score: rank such images by anomaly_score")
        else:
            out.append(f"flagged:   – ({self.no_p_value_reason})")
        out.append("most anomalous:")
        for score, name, p in self.top:
            out.append(f"  {score:>12.5g}  {'' if p is None else f'p = {p:<8.3g}'}  {name}")
        if self.overlays:
            out.append(f"overlays:  {self.overlays}/ · contact sheet {self.contact_sheet}")
        return out


def score_folder(images_dir: str, detector: str, out: Optional[str] = None, false_alarm_rate: Optional[float] = None, heatmaps: bool = False,
                 batch_size: int = 16, device: str = "auto", backbone: Optional[str] = None, skip_corrupt: bool = False, top: int = 10,
                 log: Callable[[str], None] = say) -> ScoreSummary:
    """Score every image under `images_dir` in the folder's order and write the CSV (and overlays); returns the summary."""
    t0 = time.time()
    folder = Path(images_dir)
    csv_path, heat = output_paths(folder, out)
    images = as_images(folder)  # an empty or missing folder is an error before anything is loaded
    det = AnomalyDetector.load(detector, device=device, backbone=backbone)
    if heatmaps and det.scorer.map_meaning is None and det.maps.combination == "pixel":
        raise ConfigError(f"heat maps need per-pixel maps or calibrated tiles; this detector ({det.scorer.name}, from `zsad evaluate`) has neither.")
    summary = ScoreSummary(csv_path, no_p_value_reason=None if det.calibration is not None else
                           "this detector has no calibration scores (a `zsad evaluate` prefix): fit one with `zsad fit` for p-values")
    if det.calibration is None:
        log(f"[score] {summary.no_p_value_reason}; p_value and is_anomaly are left empty")
    alpha = det.decision_rate(false_alarm_rate)  # a rate the calibration set cannot reach is refused before anything is written
    if det.tiling.count > 1:
        det.say_estimate(len(images), f"[score] expected time for {len(images)} images")
    summary.n_calibration = None if det.calibration is None else det.calibration.n
    style = _style(det, alpha)
    sheet = ContactSheet(n_calibration=summary.n_calibration) if heatmaps else None
    best: list = []
    tiled = det.tiling.count > 1
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    flagged = 0
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "anomaly_score", "p_value", "is_anomaly", *(["worst_tile"] if tiled else []), *det.scorer.feature_names])
        by_name = {n: i for i, n in enumerate(images.names)}
        for r in det.iter_scores(images, alpha, batch_size, with_maps=heatmaps, skip_corrupt=skip_corrupt):
            writer.writerow([r.name, repr(r.score), "" if r.p_value is None else repr(r.p_value), "" if r.is_anomaly is None else str(r.is_anomaly).lower(),
                             *([r.worst_tile] if tiled else []), *map(repr, map(float, r.features))])
            summary.n += 1
            flagged += bool(r.is_anomaly)
            entry = (r.score, r.name, r.p_value)
            (heapq.heappush if len(best) < top else heapq.heappushpop)(best, entry)
            if heatmaps:
                style = style or _first_scale(r.map)
                _write_overlay(heat, images, by_name[r.name], r, style, sheet, det.bit_depth)
    summary.flagged = flagged if det.calibration is not None else None
    summary.false_alarm_rate = alpha if det.calibration is not None else None
    summary.top = sorted(best, reverse=True)
    if heatmaps:
        summary.overlays = heat
        summary.contact_sheet = sheet.save(heat / "contact_sheet.png", f"{folder.name}: the {len(sheet._heap)} most anomalous of {summary.n} images "
                                           f"({det.scorer.name}{', flagged at α = ' + format(alpha, 'g') if det.calibration is not None else ''})")
    summary.seconds = time.time() - t0
    return summary


def _style(det: AnomalyDetector, alpha: Optional[float]) -> Optional[OverlayStyle]:
    """The calibration's colour scale and the outline threshold at the α decisions are made at; None for detectors
    without calibration (the first image's scale then)."""
    return overlay_style(det.maps_at(alpha))


def _first_scale(amap: np.ndarray) -> OverlayStyle:
    """Without calibration, the colour scale is the first image's (1st to 99th percentile), fixed for the run."""
    lo, hi = np.quantile(amap, [0.01, 0.99])
    return OverlayStyle(float(lo), float(max(hi, lo + 1e-12)), None)


def _write_overlay(folder: Path, images, index: int, r, style: OverlayStyle, sheet: ContactSheet, bit_depth: Optional[int]) -> None:
    original = images.source.load(index)
    full = upsample(torch.from_numpy(r.map), (original.height, original.width))
    picture = overlay(original, full, style, bit_depth=bit_depth)  # the network input's conversion: 16-bit images are not white
    target = folder / f"{Path(r.name).with_suffix('')}_overlay.png"  # sub-folders kept: a/x.png and b/x.png differ
    target.parent.mkdir(parents=True, exist_ok=True)
    picture.save(target, compress_level=1)  # fast: overlays are many and looked at, not archived
    sheet.add(r.name, r.score, r.p_value, picture)
