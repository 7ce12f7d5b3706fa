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

from zsad.data.base import FileSource, ImageDataset, open_image
from zsad.data.layouts import LabelledItem, LabelledSet, check_masks, load_mask, parse_data_spec
from zsad.data.transforms import build_transform
from zsad.detection import conformal
from zsad.detection.calibration import Calibration
from zsad.detection.inputs import Images, image_size
from zsad.detection.maps import MapSettings, anomaly_map, image_scores, pixel_map, tile_map, upsample
from zsad.detection.model import MAP_QUANTILES, AnomalyDetector, resolve_device
from zsad.detection.overlays import OverlayStyle, overlay, overlay_style
from zsad.detection.settings import DetectorSettings
from zsad.diffusion.backbone import Backbone
from zsad.diffusion.loading import load_backbone
from zsad.errors import ConfigError, DatasetNotFoundError
from zsad.evaluation.ad_metrics import PixelMetricAccumulator, decision_rates, image_metrics, mean_over_categories, rate_ci
from zsad.evaluation.baselines import BASELINES, build_baseline
from zsad.evaluation.pixel_bootstrap import STORE_FOLDER, CategoryRun, ImagePixelHistograms, method_stem, save_run
from zsad.scoring.tiles import BLENDS
from zsad.utils.console import say
from zsad.utils.files import disk_full_guard
from zsad.utils.loggers import build_logger, close_loggers, log_results, wandb_run_info

METRICS = ("image_auroc", "image_aupr", "image_f1_max", "pixel_auroc", "pixel_aupr", "aupro")
PIXEL_BINS = 20_000  # fine bins placed by the calibration maps' quantiles, overflow bins beyond (tests/test_ad_metrics.py)
DEFAULT_RATE = DetectorSettings.false_alarm_rate  # α where neither --false-alarm-rate nor a --detector gives one


@dataclass(frozen=True)
class IndustrialSettings(DetectorSettings):
    """What `zsad test` runs: every DetectorSettings field (the defaults of `zsad fit`, docs/method.md §7) and the
    benchmark's own options below."""

    __hash__ = DetectorSettings.__hash__  # the generated one would fail on scorer_options' dict

    false_alarm_rate: Optional[float] = None  # None: DetectorSettings' default when fitting, a --detector's own rate when testing one
    scorers: tuple[str, ...] = ()  # the table's methods, each fitted with these settings; empty: (scorer,)
    metric_size: Optional[int] = None  # pixel metrics at the masks' resolution unless set (masks and maps resized to it)
    baselines: bool = True
    examples: int = 3  # overlays of the best hits and the worst misses per category
    variants: bool = True  # ablation rows of the first scorer: the other map combination and image-score aggregation
    # Per category and method, each test image's pixel histograms, scores and labels in pixel_store/<category>/<method>.npz:
    # paired bootstrap intervals between two runs (experiments/paired_ad.py). Opt-in: large maps make large files.
    pixel_store: bool = False

    def methods(self) -> list[str]:
        return list(self.scorers) or [self.scorer]

    def detector_settings(self, scorer: str) -> DetectorSettings:
        """The settings one method of the table is fitted with: a row without rates rather than an error when a
        category has too few normal images for α."""
        return self.detector_part().replace(scorer=scorer, false_alarm_rate=self.false_alarm_rate or DEFAULT_RATE, require_rate=False)


@dataclass
class Scored:
    """One method's results on one category's test images (in test order)."""

    method: str
    scores: np.ndarray
    flagged: Optional[np.ndarray]
    pixel: dict  # pixel_auroc, pixel_aupr, aupro and pixel_bound, measured while streaming ({} without masks)
    seconds: float
    rate_holds: bool
    evaluations: Optional[int] = None
    style: Optional[OverlayStyle] = None
    alpha: float = 0.05  # the rate the decisions were made at, and the one the row is labelled with
    note: Optional[str] = None  # why the rates are left out
    pixels: Optional[ImagePixelHistograms] = None  # per-image pixel histograms (settings.pixel_store), else None
    maps_of: Optional[str] = None  # the method whose maps (and pixel histograms) this row shares


def check_inputs(data: str, out: Path, backbone: Optional[str], detector: Optional[str], settings: IndustrialSettings) -> list[LabelledSet]:
    """Everything that can be wrong before any work: the spec, the layout, masks, rates, the output folder."""
    if settings.false_alarm_rate is not None:
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


def _tensor(images: Images, shape: tuple[int, int], bit_depth: Optional[int]) -> torch.Tensor:
    """Images at the working shape, preprocessed as the detectors see them ([-1, 1])."""
    ds = ImageDataset(images.label, "baseline", images.source, build_transform(tuple(shape), bit_depth=bit_depth), {"image_size": list(shape)})
    return torch.stack([ds[i][0] for i in range(len(ds))]) if len(ds) else torch.zeros((0, 3, *shape))


class MapMetrics:
    """Pixel metrics of one method, streamed: each map goes into the binned accumulator as it is made (memory flat in the
    number of test images). The bins come from `sample` (the calibration maps' quantiles), with overflow bins beyond."""

    def __init__(self, sample: Optional[np.ndarray], metric_size: Optional[int], threshold: Optional[float] = None, keep_images: bool = False):
        self.sample, self.metric_size, self.threshold = sample, metric_size, threshold
        self.acc: Optional[PixelMetricAccumulator] = None
        self.keep_images = keep_images  # also keep each image's histograms on the accumulator's bins (paired bootstrap)
        self.images: Optional[ImagePixelHistograms] = None
        self.outlined_normals, self.normals, self.coverage = 0, 0, []  # what the outline (map > threshold) marks

    def add(self, item: LabelledItem, amap: np.ndarray) -> None:
        if self.acc is None:  # without calibration maps, the first test map's values place the fine bins
            self.acc = PixelMetricAccumulator.from_sample(self.sample if self.sample is not None else np.ravel(amap), bins=PIXEL_BINS)
            if self.keep_images:
                self.images = ImagePixelHistograms.like(self.acc)
        height, width = image_size(item.path)
        size = (width, height) if self.metric_size is None else (self.metric_size, self.metric_size)
        mask = load_mask(item, size)
        full = upsample(torch.from_numpy(np.ascontiguousarray(amap)), (size[1], size[0]))
        self.acc.update(full, mask)
        if self.images is not None:
            self.images.add(np.asarray(full), mask)
        if self.threshold is not None and np.isfinite(self.threshold):
            if item.label:
                if mask.any():
                    self.coverage.append(float((full[mask != 0] > self.threshold).mean()))
            else:
                self.normals += 1
                self.outlined_normals += int(amap.max() > self.threshold)

    def result(self) -> dict:
        if self.acc is None:
            return {}
        bounds = self.acc.error_bounds()
        out = {**self.acc.result(), "pixel_bound": max((b for b in bounds.values() if b is not None), default=None), "pixel_bounds": bounds}
        if self.normals:
            out["outlined_normals"] = rate_ci(self.outlined_normals, self.normals)
        if self.coverage:
            out["outline_coverage"] = float(np.mean(self.coverage))
        return out


class Examples:
    """The maps of the images an overlay page shows, kept while streaming: the n highest-scored defects (best hits),
    the n lowest-scored defects (missed) and the n highest-scored normal images (false alarms?)."""

    def __init__(self, n: int):
        self.n = n
        self.heaps: dict[str, list] = {"best hit": [], "missed defect": [], "false alarm?": []}

    def offer(self, index: int, score: float, label: int, amap: np.ndarray) -> None:
        import heapq

        kinds = [("best hit", score), ("missed defect", -score)] if label else [("false alarm?", score)]
        for kind, key in kinds:
            heap = self.heaps[kind]
            (heapq.heappush if len(heap) < self.n else heapq.heappushpop)(heap, (key, -index, np.array(amap)))  # a copy, not a view of the batch

    def picks(self) -> list[tuple[str, int, np.ndarray]]:
        return [(kind, -i, m) for kind, heap in self.heaps.items() for _, i, m in sorted(heap, key=lambda e: (-e[0], -e[1]))]


def evaluate_category(labelled: LabelledSet, bb: Optional[Backbone], detector: Optional[str], settings: IndustrialSettings,
                      out: Path) -> tuple[list[dict], Optional[Path]]:
    """Fit, score and measure every method on one category, streaming each map into its metrics; overlays of the first method."""
    test_images = Images(FileSource([i.path for i in labelled.test]), [i.name for i in labelled.test], None, labelled.category)
    labels = np.array([i.label for i in labelled.test])
    results, detectors, sheet = [], [], None
    for name in ([None] if detector else settings.methods()):
        t0 = time.time()
        if detector:
            det = AnomalyDetector.load(detector, device=settings.device)
        else:
            det = AnomalyDetector.fit(_train_images(labelled), backbone=bb, settings=settings.detector_settings(name))
            det.save(out / "detectors" / labelled.category / det.scorer.name, force=True)  # reusable: zsad score / zsad test --detector
        first = not detectors
        rows, examples = score_streamed(det, labelled, test_images, settings, variants=settings.variants and first and not detector,
                                        examples=settings.examples if first else 0, started=t0)
        results += rows
        detectors.append(det)
        if first:
            sheet = example_overlays(labelled, rows[0], examples, out, det.bit_depth) if rows[0].style and examples else None
    if settings.baselines and not detector:
        results += run_baselines(detectors[0], labelled, test_images, settings)
    measured = [measure(labelled, labels, r, settings) for r in results]
    for r in results:
        write_scores(out / "scores" / labelled.category / f"{r.method.replace(' ', '_')}.csv", labelled.test, r)
        if settings.pixel_store:
            write_pixel_store(out, labelled, labels, r)
    return measured, sheet


def _variants(det: AnomalyDetector) -> dict[str, tuple[MapSettings, bool]]:
    """Ablation rows from the same network pass, each (map settings, whether its maps differ from the default's):
    the other map combination (pixel metrics), the other image-score aggregation (image metrics), and the other tile
    blends (the position-biased plain mean of format-1 detectors, and the per-pixel maximum). They reuse the default's
    standardisation and have no calibration of their own, so no rates."""
    from dataclasses import replace as copy

    m = det.maps
    out: dict[str, tuple[MapSettings, bool]] = {}
    other = "tile" if m.combination != "tile" else "tile+pixel"
    if det.scorer.map_meaning or other == "tile":
        out[f"map: {other}"] = (copy(m, combination=other), True)
    out[f"score: {'top_k' if m.aggregation == 'max' else 'max'}"] = (copy(m, aggregation="top_k" if m.aggregation == "max" else "max"), False)
    if det.tiling.count > 1 and det.tiling.stride < det.tiling.tile:  # at stride = tile every blend is the same
        for blend in BLENDS:
            if blend != m.blend:
                out[f"blend: {blend}"] = (copy(m, blend=blend), True)
    return out


def score_streamed(det: AnomalyDetector, labelled: LabelledSet, test_images: Images, settings: IndustrialSettings, variants: bool, examples: int,
                   started: float) -> tuple[list[Scored], Examples]:
    """One pass over the test images: scores, decisions at one α, pixel metrics fed map by map (the default and each
    variant), and the maps of the overlay examples; no map is kept beyond its image."""
    alpha = _alpha(settings, det)
    rate_holds = det.calibration is not None and det.calibration.reaches(alpha)
    maps_at_alpha = det.maps_at(alpha)  # outlines at the α the rows are decided and labelled at
    masks = labelled.has_masks
    kinds = _variants(det) if variants else {}
    quantiles = None if det.calibration is None else det.calibration.map_quantiles
    with_maps = ["", *[k for k, (_, maps) in kinds.items() if maps]]
    metrics = {k: MapMetrics(quantiles, settings.metric_size, maps_at_alpha.threshold if not k else None, keep_images=settings.pixel_store)
               for k in with_maps} if masks else {}
    scores: dict[str, list[float]] = {k: [] for k in ["", *kinds]}
    flagged: list[bool] = []
    keeper = Examples(examples)
    for i, r in enumerate(det.iter_scores(test_images, alpha if rate_holds else None, batch_size=settings.batch_size, keep_parts=bool(kinds),
                                          decide=rate_holds)):
        item = labelled.test[i]
        scores[""].append(r.score)
        flagged.append(bool(r.is_anomaly))
        if masks:
            metrics[""].add(item, r.map)
        if examples:
            keeper.offer(i, r.score, item.label, r.map)
        for kind, (maps, has_maps) in kinds.items():
            tiles = torch.from_numpy(r.parts[0])[None]
            pixels = None if r.parts[1] is None else torch.from_numpy(r.parts[1])[None]
            tmap = tile_map(det.tiling, tiles, maps)
            scores[kind].append(float(image_scores(tmap, maps)[0]))
            if masks and has_maps:
                metrics[kind].add(item, anomaly_map(tmap, pixel_map(det.tiling, pixels, maps), maps)[0].numpy())
    seconds = time.time() - started
    style = overlay_style(maps_at_alpha)
    rows = [Scored(det.scorer.name, np.array(scores[""]), np.array(flagged) if rate_holds else None, metrics[""].result() if masks else {},
                   seconds, rate_holds, det.network_evaluations_per_image(), style, alpha=alpha,
                   note=None if rate_holds else _no_rate(alpha, 0 if det.calibration is None else det.calibration.n),
                   pixels=metrics[""].images if masks else None)]
    for kind in kinds:
        same_maps = {k: v for k, v in rows[0].pixel.items() if k not in ("outlined_normals", "outline_coverage")}  # outlines: default row only
        rows.append(Scored(f"{det.scorer.name} [{kind}]", np.array(scores[kind]), None,
                           metrics[kind].result() if kind in metrics else same_maps, seconds, False, rows[0].evaluations, style, alpha=alpha,
                           note="ablation row", pixels=metrics[kind].images if kind in metrics else None,
                           maps_of=None if kind in metrics or not masks else rows[0].method))
    return rows, keeper


def _alpha(settings: IndustrialSettings, det: AnomalyDetector) -> float:
    """One α per run: --false-alarm-rate, else the detector's own, else the default (a `zsad evaluate` prefix has none)."""
    for alpha in (settings.false_alarm_rate, det.false_alarm_rate):
        if alpha is not None:
            return float(alpha)
    return DEFAULT_RATE


def _no_rate(alpha: float, n_cal: int) -> str:
    return (f"too few normal images to calibrate for α = {alpha:g}: {n_cal} calibration images, ⌈1/α⌉ − 1 = "
            f"{conformal.min_calibration(alpha)} needed")


@dataclass
class _FittedBaseline:
    """One baseline while its test images stream through: fitted, calibrated, and what it has scored so far."""

    name: str
    method: Any
    calibration: Calibration
    metrics: Optional[MapMetrics]
    scores: list = field(default_factory=list)
    seconds: float = 0.0


def run_baselines(det: AnomalyDetector, labelled: LabelledSet, test_images: Images, settings: IndustrialSettings) -> list[Scored]:
    """The baselines on the detector's own fit/calibration split and working shape, at the detector's α."""
    train = _train_images(labelled)
    by_name = {n: i for i, n in enumerate(train.names)}
    shape = det.tiling.shape
    fit_x = _tensor(train.subset([by_name[n] for n in det.info["fit_names"]]), shape, det.bit_depth)
    cal_x = _tensor(train.subset([by_name[n] for n in det.info["calibration_names"]]), shape, det.bit_depth)
    alpha = _alpha(settings, det)
    fitted: list[_FittedBaseline] = []
    for name in BASELINES:
        t0 = time.time()
        method = build_baseline(name).fit(fit_x)
        cal_maps = method.maps(cal_x)
        maxima = cal_maps.flatten(1).amax(1).numpy()  # a baseline's image score is its map's maximum
        # the detectors' conformal state, so the same outline rule (the k-th largest map maximum) and colour scale
        cal = Calibration(alpha, maxima, maxima, float(np.median(cal_maps.flatten(1).median(1).values.numpy())),
                          np.quantile(cal_maps.numpy().ravel(), np.linspace(0, 1, MAP_QUANTILES)))
        metrics = MapMetrics(cal.map_quantiles, settings.metric_size, cal.map_threshold(), keep_images=settings.pixel_store) if labelled.has_masks else None
        fitted.append(_FittedBaseline(name, method, cal, metrics, seconds=time.time() - t0))
    # test images batch by batch, each read once for every baseline: a large set never sits in memory
    for start in range(0, len(test_images), settings.batch_size):
        t0 = time.time()
        x = _tensor(test_images.subset(list(range(start, min(start + settings.batch_size, len(test_images))))), shape, det.bit_depth)
        reading = time.time() - t0  # each baseline alone would read the images too
        for f in fitted:
            t0 = time.time()
            maps = f.method.maps(x)
            f.scores.append(maps.flatten(1).amax(1).numpy())
            for j, m in enumerate(maps.numpy()):
                if f.metrics:
                    f.metrics.add(labelled.test[start + j], m)
            f.seconds += reading + time.time() - t0
    out = []
    for f in fitted:
        scores, metrics, rate_holds = (np.concatenate(f.scores) if f.scores else np.zeros(0)), f.metrics, f.calibration.reaches()
        flagged = f.calibration.decide(scores) if rate_holds else None
        style = OverlayStyle(*f.calibration.colour_scale(), f.calibration.map_threshold())
        out.append(Scored(f.name, scores, flagged, metrics.result() if metrics else {}, f.seconds, rate_holds, 0, style, alpha=alpha,
                          note=None if rate_holds else _no_rate(alpha, f.calibration.n), pixels=metrics.images if metrics else None))
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


def write_pixel_store(out: Path, labelled: LabelledSet, labels: np.ndarray, r: Scored) -> Path:
    """pixel_store/<category>/<method>.npz: test names, labels, scores and per-image pixel histograms (pixel_bootstrap.save_run)."""
    run = CategoryRun(r.scores, labels, [i.name for i in labelled.test], r.pixels)
    return save_run(out / STORE_FOLDER / labelled.category / f"{method_stem(r.method)}.npz", run,
                    pixels_from=method_stem(r.maps_of) if r.maps_of and r.pixels is None else None)


def measure(labelled: LabelledSet, labels: np.ndarray, r: Scored, settings: IndustrialSettings) -> dict:
    """Image metrics, rates at the threshold, and (with masks) the streamed, binned pixel metrics with their bound."""
    row: dict[str, Any] = {"category": labelled.category, "method": r.method, **image_metrics(r.scores, labels)}
    row["alpha"] = r.alpha
    if r.flagged is not None:
        rates = decision_rates(r.flagged, labels)
        row["false_alarm"], row["detection"] = rates["false_alarm"], rates["detection"]
    else:
        row["false_alarm"] = row["detection"] = None
        row["rates_note"] = r.note or _no_rate(r.alpha, 0)
    row.update({"pixel_auroc": None, "pixel_aupr": None, "aupro": None, "pixel_bound": None, "outlined_normals": None, "outline_coverage": None})
    if labelled.has_masks:
        row.update(r.pixel)
    row["metric_size"] = settings.metric_size or "mask"
    row["n_good"], row["n_defect"] = int((labels == 0).sum()), int((labels == 1).sum())
    row["evaluations_per_image"], row["seconds_per_image"] = r.evaluations, r.seconds / max(len(labels), 1)
    return row


def example_overlays(labelled: LabelledSet, r: Scored, examples: Examples, out: Path, bit_depth: Optional[int]) -> Path:
    """The best hits (highest-scored defects) and the worst misses (lowest-scored defects, highest-scored normals) of
    one method, with the ground truth outlined in green, on one page."""
    tiles = []
    for kind, i, amap in examples.picks():
        item = labelled.test[i]
        img = open_image(item.path)
        full = upsample(torch.from_numpy(np.ascontiguousarray(amap)), (img.height, img.width))
        picture = overlay(img, full, r.style, truth=load_mask(item) if labelled.has_masks else None, bit_depth=bit_depth)
        stem = Path(item.name).with_suffix("").as_posix().replace("/", "_")
        target = out / "overlays" / labelled.category / r.method / f"{kind.replace(' ', '_').replace('?', '')}_{stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        picture.save(target)
        tiles.append((f"{kind}: {item.name}", f"score {r.scores[i]:.4g}", picture))
    from zsad.detection.overlays import labelled_sheet

    return labelled_sheet(tiles, out / "overlays" / f"{labelled.category}_{r.method}.png",
                          f"{labelled.category} — {r.method}: best hits, missed defects, highest-scored normal images (green: ground truth)")


COLUMNS = ["category", "method", "image_auroc", "image_aupr", "image_f1_max", "pixel_auroc", "pixel_aupr", "aupro", "false_alarm", "detection",
           "alpha", "n_good", "n_defect", "metric_size", "evaluations_per_image", "seconds_per_image", "pixel_bound", "outline_coverage"]


def _alphas(rows: list[dict]) -> str:
    values = sorted({float(r["alpha"]) for r in rows if r.get("alpha") is not None})
    return "/".join(f"{a:g}" for a in values) or "–"


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
            f"false alarms at α={_alphas(rows)} [95% CI] (n)", "detections [95% CI] (n)", "normals outlined [95% CI] (n)", "defect area outlined",
            "network evals / image", "s / image"]
    lines = [f"## zsad test: {data}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["category"], r["method"], *[_f(r.get(m)) for m in METRICS], _rate(r["false_alarm"]), _rate(r["detection"]),
                                        _rate(r.get("outlined_normals")), _f(r.get("outline_coverage")),
                                        str(r["evaluations_per_image"] or "–"), f"{r['seconds_per_image']:.2f}"]) + " |")
    for m in methods:
        cells = [_f(means[m][k]["mean"]) for k in METRICS]
        lines.append("| **mean** | **" + m + "** | " + " | ".join(cells) + " | | | | | | |")
    size = "the ground-truth masks' resolution" if settings.metric_size is None else f"{settings.metric_size}×{settings.metric_size} px"
    bounds = [r["pixel_bound"] for r in rows if r.get("pixel_bound") is not None]
    binned = (f"binned ({PIXEL_BINS:,} fine bins placed by the calibration maps' quantiles, log-spaced bins out to any float); the histograms "
              f"themselves bound every pixel AUROC, AUPR and AUPRO of this run within {max(bounds):.1e} of the exact value (from the pixels that share "
              "a bin; `pixel_bound` in results.csv, per metric in results.json)" if bounds else "binned")
    lines += ["", f"Image metrics are exact; pixel metrics at {size}, {binned}. AUPRO: "
              "8-connected regions pooled over the test images, PRO integrated against the FPR of all normal pixels up to 0.3, divided by 0.3. "
              "Rates: at the conformal threshold of the rate α, with Clopper–Pearson 95% intervals; false alarms are counted on the normal "
              "test images, detections on the defective ones. Outlines: a normal test image counts as outlined when any pixel of its map "
              "is above the map threshold (the k-th largest calibration map maximum, so at most α in expectation); the defect area outlined is "
              "the mean over defect images of the share of their defect pixels above it."]
    lines += [f"* {r['category']} / {r['method']}: rates left out: {r['rates_note']}."
              for r in rows if r.get("rates_note") and r["rates_note"] != "ablation row"]
    if any(r.get("rates_note") == "ablation row" for r in rows):
        lines.append("* Rows `[map: …]`, `[score: …]` and `[blend: …]` are ablations of the first scorer from the same network pass: the other map "
                     "combination (only the pixel metrics differ), the other image-score aggregation (only the image metrics differ) and the other "
                     "tile blends (`mean` is the old, position-biased blend); they reuse the default's standardisation and have no rates (they would "
                     "need a calibration of their own).")
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
                         "detection_low", "detection_high", *COLUMNS[10:], "outlined_normals_rate", "outlined_normals_n"])
        for r in rows:
            fa, de, ol = r.get("false_alarm") or {}, r.get("detection") or {}, r.get("outlined_normals") or {}
            writer.writerow([r.get(c) for c in COLUMNS[:8]] + [fa.get("rate"), fa.get("low"), fa.get("high"), fa.get("n"), de.get("rate"),
                                                               de.get("low"), de.get("high")] + [r.get(c) for c in COLUMNS[10:]]
                            + [ol.get("rate"), ol.get("n")])
