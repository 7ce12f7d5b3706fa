"""`zsad test`: labelled anomaly-detection sets (MVTec AD layout, anomalib's Folder layout) → per category, fit
on the normal images (split by hashed name into fit and calibration parts, as `zsad fit`), score the test
images, and report image AUROC / AUPR / F1-max, the false-alarm and detection rates at the conformal
threshold (Clopper–Pearson intervals), and pixel AUROC / AUPR / AUPRO; the same for two simple baselines.

Stages: read and check the data → for each category: fit → score → metrics → overlays → report (tables, W&B)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from zsad.data.base import FileSource, ImageDataset
from zsad.data.layouts import LabelledItem, LabelledSet, check_masks, load_mask, parse_data_spec
from zsad.data.transforms import build_transform
from zsad.detection import conformal
from zsad.detection.inputs import Images
from zsad.detection.maps import upsample
from zsad.detection.model import AnomalyDetector, resolve_device
from zsad.detection.overlays import OverlayStyle, overlay
from zsad.diffusion.backbone import Backbone
from zsad.diffusion.loading import load_backbone
from zsad.errors import ConfigError, DatasetNotFoundError
from zsad.evaluation.ad_metrics import PixelMetricAccumulator, decision_rates, image_metrics, mean_over_categories
from zsad.evaluation.baselines import BASELINES, build_baseline
from zsad.scoring.scorers import RECOMMENDED_SCORER
from zsad.utils.console import say
from zsad.utils.files import disk_full_guard
from zsad.utils.loggers import build_logger, close_loggers, log_results, wandb_run_info

METRICS = ("image_auroc", "image_aupr", "image_f1_max", "pixel_auroc", "pixel_aupr", "aupro")
PIXEL_BINS = 20_000  # ≥ 10,000 thresholds: within 1e-3 of the exact pixel metrics (tests/test_ad_metrics.py)


@dataclass
class IndustrialSettings:
    """What `zsad test` runs; the defaults are those of `zsad fit` (docs/method.md §7)."""

    scorers: list[str] = field(default_factory=lambda: [RECOMMENDED_SCORER])
    false_alarm_rate: float = 0.05
    shots: Optional[int] = None
    working_size: Optional[int] = None
    tile_stride: Optional[int] = None
    map_combination: Optional[str] = None
    aggregation: str = "max"
    metric_size: Optional[int] = None  # pixel metrics at the masks' resolution unless set (masks and maps resized to it)
    baselines: bool = True
    device: str = "auto"
    batch_size: int = 16
    cache_dir: Optional[str] = "outputs/feature_cache"
    examples: int = 3  # overlays of the best hits and the worst misses per category
    variants: bool = True  # ablation rows of the first scorer: the other map combination and image-score aggregation


@dataclass
class Scored:
    """One method's results on one category's test images (in test order)."""

    method: str
    scores: np.ndarray
    flagged: Optional[np.ndarray]
    maps: list[np.ndarray]  # at the working size
    seconds: float
    rate_holds: bool
    evaluations: Optional[int] = None
    style: Optional[OverlayStyle] = None
    note: Optional[str] = None  # why the rates are left out


def check_inputs(data: str, out: Path, backbone: Optional[str], detector: Optional[str], settings: IndustrialSettings) -> list[LabelledSet]:
    """Everything that can be wrong before any work: the spec, the layout, masks, rates, the output folder."""
    conformal.check_rate(settings.false_alarm_rate)
    if not backbone and not detector:
        raise ConfigError("Pass --backbone (to fit on each category's normal images) or --detector (a folder written by `zsad fit`).")
    sets = parse_data_spec(data)
    for labelled in sets:
        masks = check_masks(labelled)
        if masks["missing"]:
            raise DatasetNotFoundError(f"{labelled.category}: {len(masks['missing'])} defect image(s) have no mask, e.g. {masks['missing'][:3]}. "
                                       "Add the masks, or test without masks (a set without a mask folder gives image metrics only).")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; -o must be a folder.")
    return sets


def run_test(data: str, out: str | Path, backbone: Optional[str] = None, detector: Optional[str] = None, settings: Optional[IndustrialSettings] = None,
             logger_cfg: Any = None) -> dict:
    """Run the benchmark; write results.{md,csv,json}, overlays and a W&B run; return the rows and means."""
    settings = settings or IndustrialSettings()
    out = Path(out)
    sets = check_inputs(data, out, backbone, detector, settings)
    device = resolve_device(settings.device)
    bb = load_backbone(backbone, device=device) if backbone and not detector else None
    loggers = build_logger(logger_cfg, out, {"data": data, "backbone": backbone, "detector": detector, **settings.__dict__},
                           job_type="test") if logger_cfg else []
    failed = True
    try:
        rows, sheets, notes = [], {}, []
        for labelled in sets:
            say(f"[test] {labelled.category}: {len(labelled.train)} normal images to fit and calibrate on, {len(labelled.test)} test images "
                f"({sum(i.label for i in labelled.test)} defective){'' if labelled.has_masks else ', no masks: image metrics only'}")
            notes += labelled.notes
            category_rows, sheet = evaluate_category(labelled, bb, detector, settings, out)
            rows += category_rows
            sheets[labelled.category] = sheet
        result = report(out, rows, sheets, notes, settings, data)
        images = {f"test/overlays/{k}": v for k, v in sheets.items() if v is not None}
        scalars = {f"test/{r['category']}/{r['method']}/{m}": r[m] for r in rows for m in METRICS if r.get(m) is not None}
        log_results(loggers, scalars, tables={"test/results": (list(result["columns"]), [[r.get(c) for c in result["columns"]] for r in rows])},
                    images=images)
        result["wandb"] = wandb_run_info(loggers)
        failed = False
        return result
    finally:
        close_loggers(loggers, failed=failed)


def _train_images(labelled: LabelledSet) -> Images:
    """A category's normal images named relative to their common folder (what the hashed split uses)."""
    root = Path(os.path.commonpath([p.parent for p in labelled.train]))
    names = [p.relative_to(root).as_posix() for p in labelled.train]
    return Images(FileSource(labelled.train, root=root), names, root, labelled.category)


def _tensor(images: Images, size: int) -> torch.Tensor:
    """Images at the working size, preprocessed as the detectors see them ([-1, 1])."""
    ds = ImageDataset(images.label, "baseline", images.source, build_transform(size), {"image_size": size})
    return torch.stack([ds[i][0] for i in range(len(ds))]) if len(ds) else torch.zeros((0, 3, size, size))


def evaluate_category(labelled: LabelledSet, bb: Optional[Backbone], detector: Optional[str], settings: IndustrialSettings,
                      out: Path) -> tuple[list[dict], Optional[Path]]:
    """Fit, score and measure every method on one category; overlays of the first method."""
    test_images = Images(FileSource([i.path for i in labelled.test]), [i.name for i in labelled.test], None, labelled.category)
    labels = np.array([i.label for i in labelled.test])
    results, detectors = [], []
    for name in ([None] if detector else settings.scorers):
        t0 = time.time()
        if detector:
            det = AnomalyDetector.load(detector, device=settings.device)
        else:
            det = AnomalyDetector.fit(_train_images(labelled), backbone=bb, scorer=name, false_alarm_rate=settings.false_alarm_rate, shots=settings.shots,
                                      working_size=settings.working_size, tile_stride=settings.tile_stride, device=settings.device,
                                      cache_dir=settings.cache_dir, batch_size=settings.batch_size, map_combination=settings.map_combination,
                                      aggregation=settings.aggregation, require_rate=False)
            det.save(out / "detectors" / labelled.category / det.scorer.name, force=True)  # reusable: zsad score / zsad test --detector
        variants = settings.variants and not detectors and not detector
        scored = list(det.iter_scores(test_images, batch_size=settings.batch_size, keep_parts=variants))
        style = OverlayStyle(det.maps.vmin, det.maps.vmax, det.maps.threshold) if det.maps.vmin is not None else None
        rate_holds = det.calibration is not None and det.info.get("rate_holds", True)
        results.append(Scored(det.scorer.name, np.array([r.score for r in scored]), np.array([bool(r.is_anomaly) for r in scored]) if rate_holds else None,
                              [r.map for r in scored], time.time() - t0, rate_holds, det.network_evaluations_per_image(), style))
        detectors.append(det)
        if variants:
            results += variant_rows(det, scored, results[-1])
    if settings.baselines and not detector:
        results += run_baselines(detectors[0], labelled, test_images, settings)
    rows = [measure(labelled, labels, r, settings) for r in results]
    for r in results:
        write_scores(out / "scores" / labelled.category / f"{r.method.replace(' ', '_')}.csv", labelled.test, r)
    sheet = example_overlays(labelled, results[0], out, settings.examples) if results[0].style else None
    return rows, sheet


def variant_rows(det: AnomalyDetector, scored: list, default: Scored) -> list[Scored]:
    """Ablation rows from the same network pass: the other map combination (pixel metrics) and the other
    image-score aggregation (image metrics); their rates would need a calibration of their own, so none."""
    from dataclasses import replace as copy

    from zsad.detection.maps import anomaly_map, image_scores

    rows = []
    tiles = torch.from_numpy(np.stack([r.parts[0] for r in scored]))
    pixels = None if scored[0].parts[1] is None else torch.from_numpy(np.stack([r.parts[1] for r in scored]))
    other = "tile" if det.maps.combination != "tile" else "tile+pixel"
    if pixels is not None or other == "tile":
        maps = anomaly_map(tiles, pixels, copy(det.maps, combination=other))
        rows.append(copy(default, method=f"{default.method} [map: {other}]", maps=list(maps.numpy()), flagged=None, note="ablation row"))
    aggregation = "top_k" if det.maps.aggregation == "max" else "max"
    scores = image_scores(tiles, copy(det.maps, aggregation=aggregation))
    rows.append(copy(default, method=f"{default.method} [score: {aggregation}]", scores=scores, flagged=None, note="ablation row"))
    return rows


def run_baselines(det: AnomalyDetector, labelled: LabelledSet, test_images: Images, settings: IndustrialSettings) -> list[Scored]:
    """The baselines on the detector's own fit/calibration split and working size."""
    train = _train_images(labelled)
    by_name = {n: i for i, n in enumerate(train.names)}
    size = det.tiling.working_size
    fit_x = _tensor(train.subset([by_name[n] for n in det.info["fit_names"]]), size)
    cal_x = _tensor(train.subset([by_name[n] for n in det.info["calibration_names"]]), size)
    test_x = _tensor(test_images, size)
    out = []
    for name in BASELINES:
        t0 = time.time()
        method = build_baseline(name).fit(fit_x)
        cal_maps, test_maps = method.maps(cal_x), method.maps(test_x)
        cal_scores, scores = cal_maps.flatten(1).amax(1).numpy(), test_maps.flatten(1).amax(1).numpy()
        rate_holds = det.info.get("rate_holds", True)
        flagged = conformal.is_anomaly(cal_scores, scores, settings.false_alarm_rate) if rate_holds else None
        values = cal_maps.numpy().ravel()
        threshold = float(np.quantile(values, 1 - settings.false_alarm_rate))
        lo, hi = float(np.median(values)), threshold + max(threshold - float(np.median(values)), 1e-12)
        out.append(Scored(name, scores, flagged, [m.numpy() for m in test_maps], time.time() - t0, rate_holds, 0, OverlayStyle(lo, hi, threshold)))
    return out


def write_scores(path: Path, items: list[LabelledItem], r: Scored) -> None:
    """Every per-image number behind a row: name, label, defect type, score, decision."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "defect", "anomaly_score", "is_anomaly"])
        for k, item in enumerate(items):
            writer.writerow([item.name, item.label, item.defect, repr(float(r.scores[k])), "" if r.flagged is None else str(bool(r.flagged[k])).lower()])


def measure(labelled: LabelledSet, labels: np.ndarray, r: Scored, settings: IndustrialSettings) -> dict:
    """Image metrics, rates at the threshold, and (with masks) streamed, binned pixel metrics."""
    row: dict[str, Any] = {"category": labelled.category, "method": r.method, **image_metrics(r.scores, labels)}
    row["alpha"] = settings.false_alarm_rate
    if r.flagged is not None:
        rates = decision_rates(r.flagged, labels)
        row["false_alarm"], row["detection"] = rates["false_alarm"], rates["detection"]
    else:
        row["false_alarm"] = row["detection"] = None
        row["rates_note"] = r.note or (f"too few normal images to calibrate for α = {settings.false_alarm_rate:g} "
                                       f"(⌈1/α⌉ − 1 = {conformal.min_calibration(settings.false_alarm_rate)} needed)")
    row.update({"pixel_auroc": None, "pixel_aupr": None, "aupro": None})
    if labelled.has_masks and r.maps:
        row.update(pixel_metrics(labelled.test, r.maps, settings.metric_size))
    row["metric_size"] = settings.metric_size or "mask"
    row["n_good"], row["n_defect"] = int((labels == 0).sum()), int((labels == 1).sum())
    row["evaluations_per_image"], row["seconds_per_image"] = r.evaluations, r.seconds / max(len(labels), 1)
    return row


def pixel_metrics(items: list[LabelledItem], maps: list[np.ndarray], metric_size: Optional[int]) -> dict:
    """Pixel AUROC / AUPR / AUPRO at the masks' resolution (or metric_size), binned over the maps' range."""
    low = float(min(m.min() for m in maps))
    high = float(max(m.max() for m in maps))
    acc = PixelMetricAccumulator(low, max(high, low + 1e-9), bins=PIXEL_BINS)
    for item, m in zip(items, maps):
        with Image.open(item.path) as img:
            size = img.size if metric_size is None else (metric_size, metric_size)
        mask = load_mask(item, size)
        acc.update(upsample(torch.from_numpy(np.ascontiguousarray(m)), (size[1], size[0])), mask)
    return acc.result()


def example_overlays(labelled: LabelledSet, r: Scored, out: Path, n: int) -> Path:
    """The best hits (highest-scored defects) and the worst misses (lowest-scored defects, highest-scored
    normals) of one method, with the ground truth outlined in green, on one page."""
    order = np.argsort(-r.scores, kind="stable")
    defects = [i for i in order if labelled.test[i].label]
    goods = [i for i in order if not labelled.test[i].label]
    picks = [("best hit", i) for i in defects[:n]] + [("missed defect", i) for i in defects[::-1][:n]] + [("false alarm?", i) for i in goods[:n]]
    tiles = []
    for kind, i in picks:
        item = labelled.test[i]
        with Image.open(item.path) as img:
            img = img.convert("RGB")
        full = upsample(torch.from_numpy(np.ascontiguousarray(r.maps[i])), (img.height, img.width))
        picture = overlay(img, full, r.style, truth=load_mask(item) if labelled.has_masks else None)
        stem = Path(item.name).with_suffix("").as_posix().replace("/", "_")
        target = out / "overlays" / labelled.category / r.method / f"{kind.replace(' ', '_').replace('?', '')}_{stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        picture.save(target)
        tiles.append((f"{kind}: {item.name}", f"score {r.scores[i]:.4g}", picture))
    from zsad.detection.overlays import labelled_sheet

    return labelled_sheet(tiles, out / "overlays" / f"{labelled.category}_{r.method}.png",
                          f"{labelled.category} — {r.method}: best hits, missed defects, highest-scored normal images (green: ground truth)")


COLUMNS = ["category", "method", "image_auroc", "image_aupr", "image_f1_max", "pixel_auroc", "pixel_aupr", "aupro", "false_alarm", "detection",
           "alpha", "n_good", "n_defect", "metric_size", "evaluations_per_image", "seconds_per_image"]


def _f(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _rate(rate: Optional[dict]) -> str:
    if not rate or rate.get("rate") is None:
        return "–"
    return f"{rate['rate']:.2f} [{rate['low']:.2f}, {rate['high']:.2f}] (n={rate['n']})"


def report(out: Path, rows: list[dict], sheets: dict, notes: list[str], settings: IndustrialSettings, data: str) -> dict:
    """results.md, results.csv and results.json: a row per (category, method) and a mean row per method."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    means = {m: mean_over_categories({r["category"]: {k: r.get(k) for k in METRICS} for r in rows if r["method"] == m}) for m in methods}
    head = ["category", "method", "image AUROC", "image AUPR", "F1-max", "pixel AUROC", "pixel AUPR", "AUPRO",
            f"false alarms at α={settings.false_alarm_rate:g} [95% CI] (n)", "detections [95% CI] (n)", "network evals / image", "s / image"]
    lines = [f"## zsad test: {data}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["category"], r["method"], *[_f(r.get(m)) for m in METRICS], _rate(r["false_alarm"]), _rate(r["detection"]),
                                        str(r["evaluations_per_image"] or "–"), f"{r['seconds_per_image']:.2f}"]) + " |")
    for m in methods:
        cells = [_f(means[m][k]["mean"]) for k in METRICS]
        lines.append("| **mean** | **" + m + "** | " + " | ".join(cells) + " | | | | |")
    size = "the ground-truth masks' resolution" if settings.metric_size is None else f"{settings.metric_size}×{settings.metric_size} px"
    lines += ["", f"Image metrics are exact; pixel metrics at {size}, binned over {PIXEL_BINS:,} thresholds (within 1e-3 of exact). AUPRO: "
              "8-connected regions pooled over the test images, PRO integrated against the FPR of all normal pixels up to 0.3, divided by 0.3. "
              "Rates: at the conformal threshold of the fitted rate α, with Clopper–Pearson 95% intervals; false alarms are counted on the normal "
              "test images, detections on the defective ones."]
    lines += [f"* {r['category']} / {r['method']}: rates left out: {r['rates_note']}."
              for r in rows if r.get("rates_note") and r["rates_note"] != "ablation row"]
    if any(r.get("rates_note") == "ablation row" for r in rows):
        lines.append("* Rows `[map: …]` and `[score: …]` are ablations of the first scorer from the same network pass: the other map combination "
                     "(only the pixel metrics differ) and the other image-score aggregation (only the image metrics differ); no rates (they would need "
                     "a calibration of their own).")
    lines += [f"* {n}" for n in dict.fromkeys(notes)]
    md = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    with disk_full_guard(out / "results.json", partial=[out / "results.md", out / "results.csv", out / "results.json"]):
        (out / "results.md").write_text(md)
        _write_csv(out / "results.csv", rows)
        (out / "results.json").write_text(json.dumps({"data": data, "settings": settings.__dict__, "rows": rows, "means": means,
                                                      "overlays": {k: str(v) for k, v in sheets.items() if v}}, indent=2, default=str))
    return {"rows": rows, "means": means, "table_markdown": md, "columns": COLUMNS, "output_dir": str(out)}


def _write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*COLUMNS[:8], "false_alarm_rate", "false_alarm_low", "false_alarm_high", "n_good_test", "detection_rate",
                         "detection_low", "detection_high", *COLUMNS[10:]])
        for r in rows:
            fa, de = r.get("false_alarm") or {}, r.get("detection") or {}
            writer.writerow([r.get(c) for c in COLUMNS[:8]] + [fa.get("rate"), fa.get("low"), fa.get("high"), fa.get("n"), de.get("rate"),
                                                               de.get("low"), de.get("high")] + [r.get(c) for c in COLUMNS[10:]])
