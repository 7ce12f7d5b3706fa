"""`AnomalyDetector`: fit on normal images, calibrate, score, localise. The Python API and the one code path
behind `zsad fit` and `zsad score` (docs/method.md §7).

    det = AnomalyDetector.fit("normal/", backbone="zsad-demo", false_alarm_rate=0.05)
    det.save("det/")
    res = AnomalyDetector.load("det/").score("to_check/")   # res.scores, res.p_values, res.is_anomaly, res.maps, res.files

A detector folder holds the fitted density model (`detector.json/.npz`), the feature recipe (`recipe.json`),
the calibration scores and the quantiles of the calibration maps (`calibration.npz`), the threshold and map
settings (`settings.json`) and a card (`card.md`). A prefix written by `zsad evaluate` loads too: it has no
calibration, so no p-values. Folders of an older format are refused with a message to refit.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from zsad.data.base import ImageDataset
from zsad.data.transforms import PREPROCESSING_VERSION, build_transform
from zsad.detection.calibration import Calibration
from zsad.detection.conformal import check_rate
from zsad.detection.estimate import LONG_RUN_SECONDS, estimate, faster_settings, seconds_per_evaluation
from zsad.detection.inputs import Images, as_images, bit_depth_of
from zsad.detection.maps import MapSettings, anomaly_map, image_scores, pixel_map, tile_map, upsample
from zsad.detection.presets import get_preset, preset_options
from zsad.detection.settings import DetectorSettings
from zsad.detection.sizing import choose_working_shape, image_sizes
from zsad.detection.split import split_normal
from zsad.diffusion.backbone import Backbone
from zsad.diffusion.loading import load_backbone
from zsad.errors import ConfigError, ZsadError
from zsad.scoring.detector import GMMDetector, SoftMinKNNDetector, load_detector, make_detector
from zsad.scoring.extraction import configure_precision, extract_features
from zsad.scoring.feature_cache import FeatureCache
from zsad.scoring.recipe import FeatureRecipe, RecipeMismatchError, recipe_for
from zsad.scoring.scorers import RECOMMENDED_SCORER, SCORERS, Scorer, build_scorer, image_seeds
from zsad.scoring.tiles import TiledScorer, Tiling
from zsad.utils.console import say, warn
from zsad.utils.progress import progress_bar

# 2: Hann-blended tile maps, the outline threshold from per-image map maxima, the working shape with the images'
# aspect ratio, the bit-depth rule in the recipe. Format 1 folders are refused: their scores and thresholds differ.
FOLDER_FORMAT = 2
MAP_QUANTILES = 20_001  # quantiles of the calibration maps kept in calibration.npz: the bin edges of streamed pixel metrics
MAP_SAMPLE_PER_IMAGE = 4096  # calibration map values sampled per image (evenly spaced) for those quantiles
# Model selection for a user's normal images: few components (tens to thousands of feature rows), chosen by
# 5-fold cross-validated log-likelihood on at most 10,000 rows, then refitted on all of them.
FIT_DETECTOR = {"mode": "grid", "grid_components": [1, 2, 4, 8], "grid_covariances": ["full", "diag"], "cv_folds": 5, "grid_max_samples": 10_000}
PRECISIONS = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class DetectorFolderError(ZsadError, ValueError):
    """A detector folder that is missing, damaged or not a detector."""


@dataclass
class ImageScore:
    """One scored image: its name, score, p-value and decision, the worst tile's features and the anomaly map
    at the working shape (None when maps were not asked for)."""

    name: str
    score: float
    p_value: Optional[float]
    is_anomaly: Optional[bool]
    worst_tile: int
    features: np.ndarray
    map: Optional[np.ndarray] = None
    parts: Optional[tuple] = None  # (raw tile scores [T], per-tile pixel maps [T, s, s] or None), when asked


@dataclass
class ScoreResult:
    """Scores of many images, in input order; maps at each input's own resolution (when asked for)."""

    files: list[str]
    scores: np.ndarray
    p_values: Optional[np.ndarray]
    is_anomaly: Optional[np.ndarray]
    features: np.ndarray
    feature_names: list[str]
    maps: list[np.ndarray] = field(default_factory=list)
    false_alarm_rate: Optional[float] = None


def resolve_device(device: str) -> torch.device:
    """`auto` is a CUDA GPU when there is one, else the CPU; anything else must exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA GPU is visible here. Use --device cpu (or auto).")
    return torch.device(device)


def make_tiling(image_size: int, shape: tuple[int, int], tile_stride: Optional[int]) -> Tiling:
    """Tiles at the backbone's resolution over the working shape (height, width), every `tile_stride` pixels
    (default half a tile); one tile when the working shape is the backbone's."""
    if tuple(shape) == (image_size, image_size):
        return Tiling.whole(image_size)
    return Tiling(int(shape[0]), int(shape[1]), image_size, int(tile_stride or max(1, image_size // 2)))


SMALL_NETWORK_PARAMETERS = 5_000_000  # below this a network call costs about the same for 8 rows as for 64 on a CPU


def default_network_batch(device: torch.device, tiles: int, parameters: int) -> Optional[int]:
    """The detector's network call size when none is given. Every call is padded to its full size (features that do not
    depend on the batch), so the size trades per-call overhead against padding. On a CPU a small network (the demo's
    0.35 M parameters) is bound by per-call overhead: 64 rows a call. A large one (DiffPath's CelebA-32 UNet, 52.5 M)
    costs the same per row at 8 rows as at 64, so its calls are sized to the image's tiles (a multiple of 8, up to 64):
    one 64 px image of 4 tiles in 64-row calls computed 16 times its work (bench/bench_detector.py). None on a GPU:
    the scorers' own default."""
    if device.type != "cpu":
        return None
    return 64 if parameters < SMALL_NETWORK_PARAMETERS else min(64, 8 * -(-tiles // 8))


def _fit_call_size(device: torch.device, tiles: int, backbone: Backbone) -> Optional[int]:
    """The call size `zsad fit` gives this backbone's network on this device for images of `tiles` tiles."""
    return default_network_batch(device, tiles, sum(p.numel() for p in backbone.parameters()))


def detector_scorer(backbone: Backbone, shape: tuple[int, int], device: torch.device, scorer: str = RECOMMENDED_SCORER,
                    scorer_options: Optional[dict] = None, preset: str = "default", tile_stride: Optional[int] = None,
                    network_batch: Optional[int] = None, seed: int = 0) -> TiledScorer:
    """The tiled scorer `zsad fit` runs over a working shape (height, width): the preset fills the tile stride and
    scorer options left unset, and the network call size is `default_network_batch`'s for this device unless given.
    The benchmarks (bench_tiles, bench_gpu) time this same object."""
    options, stride = preset_options(preset, SCORERS[scorer], scorer_options, tile_stride, backbone.image_size)
    tiling = make_tiling(backbone.image_size, shape, stride)
    batch = network_batch or _fit_call_size(device, tiling.count, backbone)
    inner = build_scorer(scorer, **{**options, **({"network_batch": int(batch)} if batch else {})})
    return TiledScorer(inner=inner, tiling=tiling, seed=seed)


class AnomalyDetector:
    """A diffusion-feature detector fitted on normal images, with a calibrated false-alarm rate."""

    def __init__(self, backbone: Backbone, tiled: TiledScorer, detector: Any, recipe: FeatureRecipe, maps: MapSettings,
                 calibration: Optional[Calibration] = None, tile_position: bool = False, info: Optional[dict] = None):
        if tiled.seed != recipe.seed:
            raise ValueError(f"the tiled scorer's seed {tiled.seed} differs from the recipe's {recipe.seed}")
        self.backbone, self.tiled, self.detector, self.recipe = backbone, tiled, detector, recipe
        self.scorer, self.tiling = tiled.inner, tiled.tiling
        self.maps, self.tile_position, self.info = maps, tile_position, dict(info or {})
        # None until calibrated (fit calibrates last) and for a `zsad evaluate` prefix
        self.calibration: Optional[Calibration] = calibration

    @property
    def false_alarm_rate(self) -> Optional[float]:
        """The rate the detector was calibrated for (None without calibration)."""
        return None if self.calibration is None else self.calibration.false_alarm_rate

    @property
    def precision(self) -> str:
        """The recipe's precision: features are computed as they were fitted."""
        return self.recipe.precision

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, normal: Any, backbone: str | Backbone = "diffpath-celeba32", settings: Optional[DetectorSettings] = None,
            **options: Any) -> "AnomalyDetector":
        """Fit on normal images (a folder, paths, PIL images, arrays or a tensor): split by hashed name into a
        fit part and a calibration part, fit the detector on the fit part's tile features, calibrate on the rest.
        `settings` (DetectorSettings, its defaults when None) says how; keywords replace its fields
        (`fit(normal, tile_stride=32)`). Its `preset` fills the tile stride and scorer options left unset."""
        t0 = time.time()
        s = (settings or DetectorSettings()).detector_part().replace(**options)
        alpha = check_rate(s.false_alarm_rate)
        get_preset(s.preset)  # a wrong name fails before any work
        kind = s.detector_kind or build_scorer(s.scorer, **(s.scorer_options or {})).detector  # an unknown scorer or option too
        if s.tile_position and kind != "gmm":  # before reading any image
            raise ConfigError(f"--tile-position adds the tile's centre to a Gaussian mixture's features; scorer '{s.scorer}' is fitted by "
                              f"a {kind} detector here, which does not take positions. Leave --tile-position off or use --detector-kind gmm.")
        images = as_images(normal)
        skipped: list[str] = []
        if s.skip_corrupt:  # before the split, so that the calibration part keeps the size the rate needs
            images, skipped = _readable_only(images)
        dev = resolve_device(s.device)
        bb = backbone if isinstance(backbone, Backbone) else load_backbone(backbone, device=dev)
        _, tile_stride = preset_options(s.preset, SCORERS[s.scorer], s.scorer_options, s.tile_stride, bb.image_size)
        shape = choose_working_shape(_checked(lambda: image_sizes(images)), bb.image_size, s.working_size, images.names, tile_stride)
        tiled = detector_scorer(bb, (shape.height, shape.width), dev, s.scorer, s.scorer_options, s.preset, s.tile_stride, s.network_batch, s.seed)
        tiling, inner = tiled.tiling, tiled.inner
        split = split_normal(images.names, alpha, s.shots, tiling.count, require_rate=s.require_rate)
        depth = _checked(lambda: bit_depth_of(images, override=s.bit_depth))  # one rule for the folder, recorded in the recipe
        preprocessing = {"image_size": [tiling.height, tiling.width], "center_crop": None, "tiles": tiling.to_dict(), "bit_depth": depth,
                         "version": PREPROCESSING_VERSION}
        configure_precision(False)
        recipe = recipe_for(inner, bb, preprocessing, s.seed, dev, s.precision)
        combination = s.map_combination or ("tile+pixel" if inner.map_meaning else "tile")
        maps = MapSettings(combination=combination, aggregation=s.aggregation, top_k=s.top_k, blend=s.blend,
                           pixel_sigma=tiling.tile / 8 if tiling.count > 1 else 0.0)
        det = cls(bb, tiled, None, recipe, maps, tile_position=s.tile_position)
        say(f"[fit] working shape {tiling.height}×{tiling.width} px: {shape.reason}; {depth}-bit pixel values")
        for note in shape.notes + ([f"skipped {len(skipped)} unreadable image(s), first: {skipped[0]}"] if skipped else []):
            say(f"[fit] note: {note}")
        say(f"[fit] {len(images)} normal images: {len(split.fit)} to fit, {len(split.calibration)} to calibrate (α = {alpha:g}); "
            f"{tiling.count} tile(s) of {tiling.tile} px per image, {det.network_evaluations_per_image():,} network evaluations per image")
        det.say_estimate(len(split.fit) + len(split.calibration), "[fit] expected time for fit and calibration")
        fit_rows = det._fit_features(images.subset(split.fit), s.cache_dir, s.batch_size)
        det._fit_density(fit_rows, kind)
        det._calibrate(images.subset(split.calibration), s.batch_size, alpha)
        det.info = {"n_normal": len(images), "n_fit": len(split.fit), "n_calibration": len(split.calibration), "shots": s.shots,
                    "source": str(images.root or images.label), "fit_seconds": round(time.time() - t0, 1),
                    "backbone": bb.source or bb.path, "scorer": inner.name, "rate_holds": split.rate_holds,
                    "working_shape_reason": shape.reason, "notes": shape.notes, "skipped": skipped,
                    "fit_names": [images.names[i] for i in split.fit], "calibration_names": [images.names[i] for i in split.calibration]}
        return det

    def network_evaluations_per_image(self) -> int:
        return self.tiled.network_evaluations_per_image(self.backbone.num_timesteps)

    def say_estimate(self, images: int, what: str) -> float:
        """Print (and log) the expected seconds of running `images` images, from one timed network call; past
        `LONG_RUN_SECONDS` on a CPU, also the settings that would cut it most. Returns the estimate."""
        evaluations = images * self.network_evaluations_per_image()
        # the timed call costs at most 5% of the run: a whole 64-tile call would add a quarter to one fast-preset image
        rows = max(1, min(self.scorer.network_batch_for(self.backbone.alphas_cumprod.device), evaluations // 20))
        per_evaluation = seconds_per_evaluation(self.backbone, rows)
        guess = estimate(per_evaluation, images, self.network_evaluations_per_image())
        say(guess.sentence(what))
        if guess.seconds > LONG_RUN_SECONDS and self.backbone.alphas_cumprod.device.type == "cpu":
            per_tile = self.network_evaluations_per_image() // self.tiling.count
            fast_options, _ = preset_options("fast", type(self.scorer), {}, None, self.tiling.tile)
            try:
                fast = replace(self.scorer, **fast_options).network_evaluations_per_image(self.backbone.num_timesteps)
            except ConfigError:  # the preset's options clash with this scorer's own (e.g. a fused scorer's fixed v2 steps)
                fast = None
            say("  that is long on a CPU; faster settings (refit with one of them): " + "; ".join(
                faster_settings(self.tiling, per_tile, per_evaluation, images, fast)
                + (["--device cuda (a GPU is visible)"] if torch.cuda.is_available() else [])))
        return guess.seconds

    def _dataset(self, images: Images, split: str, skip_corrupt: bool = False) -> ImageDataset:
        prep = self.recipe.preprocessing
        size = prep["image_size"]
        transform = build_transform(size if isinstance(size, int) else tuple(size), prep.get("center_crop"), bit_depth=prep.get("bit_depth"))
        return ImageDataset(images.label, split, images.source, transform, {**prep, "options": {}}, skip_corrupt=skip_corrupt)

    @property
    def bit_depth(self) -> Optional[int]:
        """The run's bit-depth rule (None: a `zsad evaluate` prefix, 16-bit full scale)."""
        return self.recipe.preprocessing.get("bit_depth")

    def _fit_features(self, images: Images, cache_dir: Optional[str | Path], batch_size: int) -> np.ndarray:
        """Tile feature rows [N·T, D] of the fit part, through the feature cache (as `zsad evaluate`)."""
        dataset = self._dataset(images, "fit")
        accelerator = "gpu" if self.backbone.alphas_cumprod.device.type == "cuda" else "cpu"
        trainer_kwargs = dict(accelerator=accelerator, devices=1, precision=self.precision, enable_progress_bar=False, enable_model_summary=False)
        with tempfile.TemporaryDirectory() as tmp:
            cache = FeatureCache(cache_dir or tmp)
            fs = extract_features(self.backbone, self.tiled, dataset, cache, self.recipe, trainer_kwargs, batch_size, 0)
        return self._rows(torch.from_numpy(fs.features))

    def _rows(self, features: torch.Tensor) -> np.ndarray:
        """Per-image features [B, T·D] → detector rows [B·T, D] (+ the tile's centre when `tile_position`)."""
        T = self.tiling.count
        rows = features.reshape(features.shape[0] * T, -1).to(torch.float64)
        if self.tile_position:
            rows = torch.cat([rows, self.tiling.positions().repeat(features.shape[0], 1)], dim=1)
        return rows.numpy()

    def _fit_density(self, rows: np.ndarray, kind: str) -> None:
        """The `kind` detector on the fit part's tile rows: a Gaussian mixture chosen by cross-validation, or a method's
        detector with its defaults (DiffPath-1D's KDE, UFCOD's soft-min kNN, SCOPED's KDE). The soft-min kNN picks its
        references at every tile position, as UFCOD picks them among images: facility location over all tile rows
        together costs O(n_references · N²) (docs/method.md §4)."""
        T = self.tiling.count
        images = np.arange(len(rows)) // T if T > 1 else None  # rows are image-major: row i is tile i % T of image i // T
        if kind == "gmm":
            self.detector = GMMDetector(**FIT_DETECTOR).fit(rows)
        elif kind == "softmin_knn" and images is not None:
            self.detector = make_detector(kind, None).fit(rows, groups=np.arange(len(rows)) % T)
        else:
            self.detector = make_detector(kind, None).fit(rows)
        # the fit tiles' scores standardise every tile score: a soft-min kNN scores each fit tile without its own image's
        # references (with one tile per image, itself), as a new image's tiles are scored
        if isinstance(self.detector, SoftMinKNNDetector):
            fit_scores = self.detector.score_fitted(rows, images)
        else:
            fit_scores = self.detector.score(rows)
        self.maps.tile_mean, self.maps.tile_std = float(fit_scores.mean()), float(max(fit_scores.std(), 1e-12))

    def _calibrate(self, images: Images, batch_size: int, alpha: float) -> None:
        """The calibration at rate α (scores, map maxima, typical map value, quantiles of map values), and from it the
        outline threshold and the overlays' colour scale, in memory bounded by the number of images (not their pixels):
        the per-pixel maps wait in a file on disk until their moments, which standardise them, are known."""
        n, (H, W) = len(images), self.tiling.shape
        scores, tile_scores = [], []
        moments = np.zeros(3)  # count, sum, sum of squares of the per-pixel map values (float64)
        with tempfile.TemporaryDirectory(prefix="zsad-calibration-") as tmp:
            pixels = None
            for batch in self._stream(self._dataset(images, "calibration"), batch_size, "[calibrate]"):
                scores.append(image_scores(tile_map(self.tiling, batch.tile_scores, self.maps), self.maps))
                tile_scores.append(batch.tile_scores)
                pm = pixel_map(self.tiling, batch.pixel_maps, self.maps)
                if pm is not None:
                    if pixels is None:
                        pixels = np.lib.format.open_memmap(Path(tmp) / "pixel_maps.npy", mode="w+", dtype=np.float64, shape=(n, H, W))
                    pixels[batch.positions[0] : batch.positions[-1] + 1] = pm.numpy()
                    moments += [pm.numel(), float(pm.sum()), float((pm * pm).sum())]
            if moments[0]:
                mean = moments[1] / moments[0]
                self.maps.pixel_mean, self.maps.pixel_std = float(mean), float(max(np.sqrt(max(moments[2] / moments[0] - mean**2, 0)), 1e-12))
            maxima, medians, sample = self._calibration_map_statistics(torch.cat(tile_scores), pixels, batch_size)
        self.calibration = Calibration(alpha, np.concatenate(scores), maxima, float(np.median(medians)),
                                       np.quantile(sample, np.linspace(0, 1, MAP_QUANTILES)))
        self.maps.threshold = self.calibration.map_threshold()
        self.maps.vmin, self.maps.vmax = self.calibration.colour_scale()

    def _calibration_map_statistics(self, tile_scores: torch.Tensor, pixels: Optional[np.ndarray], batch_size: int) -> tuple:
        """Per calibration image: the anomaly map's maximum and median, and an evenly spaced sample of its values."""
        maxima, medians, sample = [], [], []
        for start in range(0, tile_scores.shape[0], batch_size):
            stop = min(start + batch_size, tile_scores.shape[0])
            tmap = tile_map(self.tiling, tile_scores[start:stop], self.maps)
            amap = anomaly_map(tmap, None if pixels is None else torch.from_numpy(np.array(pixels[start:stop])), self.maps).flatten(1).numpy()
            maxima.append(amap.max(axis=1))
            medians.append(np.median(amap, axis=1))
            picks = np.unique(np.linspace(0, amap.shape[1] - 1, min(MAP_SAMPLE_PER_IMAGE, amap.shape[1])).round().astype(np.int64))
            sample.append(amap[:, picks].ravel())
        return np.concatenate(maxima), np.concatenate(medians), np.concatenate(sample)

    # ------------------------------------------------------------------ scoring
    @dataclass
    class _Batch:
        positions: list[int]
        tile_scores: torch.Tensor  # [B, T]
        pixel_maps: Optional[torch.Tensor]  # [B, T, s, s]
        features: torch.Tensor  # [B, T, D]

    def _stream(self, dataset: ImageDataset, batch_size: int, desc: str) -> Iterator["AnomalyDetector._Batch"]:
        """One network pass per batch: tile features and per-pixel maps together, scored by the detector."""
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=0)
        dtype = PRECISIONS.get(self.precision)
        device = self.backbone.alphas_cumprod.device
        position = 0
        with progress_bar(len(dataset), desc) as bar:
            for images, _ in loader:
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    features, pixel_maps = self.tiled(self.backbone, images, image_seeds(self.recipe.seed, images), with_maps=True)
                B, T = images.shape[0], self.tiling.count
                tile_scores = torch.from_numpy(self.detector.score(self._rows(features))).reshape(B, T)
                yield AnomalyDetector._Batch(list(range(position, position + B)), tile_scores, pixel_maps, features.reshape(B, T, -1))
                position += B
                bar.update(B)

    def decision_rate(self, false_alarm_rate: Optional[float] = None) -> Optional[float]:
        """The α decisions are made at: `false_alarm_rate` or the fitted one; None without calibration. A rate this
        calibration set cannot reach (k = ⌊α(n_cal + 1)⌋ = 0: nothing could ever be flagged) is an error."""
        if self.calibration is None:
            return None
        return self.calibration.require_rate(false_alarm_rate, "Use --false-alarm-rate {smallest:g} or more (1/(n_cal + 1)), or refit with more "
                                                               "normal images (zsad fit).")

    def maps_at(self, alpha: Optional[float]) -> MapSettings:
        """The map settings with the outline threshold (and colour scale) of rate `alpha`: the k-th largest calibration map
        maximum, so outlines mean the α that decisions are made at. The fitted settings for the fitted α or without maxima."""
        if alpha is None or self.calibration is None or not self.calibration.has_maps or alpha == self.false_alarm_rate:
            return self.maps
        vmin, vmax = self.calibration.colour_scale(alpha)
        return replace(self.maps, threshold=self.calibration.map_threshold(alpha), vmin=vmin, vmax=vmax)

    def iter_scores(self, images: Any, false_alarm_rate: Optional[float] = None, batch_size: int = 16, with_maps: bool = True,
                    skip_corrupt: bool = False, keep_parts: bool = False, decide: bool = True) -> Iterator[ImageScore]:
        """Score images one batch at a time (memory stays flat with the number of images), in input order.
        `keep_parts` also returns each image's raw tile scores and per-tile pixel maps (for ablations of how they
        blend and combine). `decide=False` gives scores and p-values without decisions (no rate is checked)."""
        images = as_images(images)
        alpha = self.decision_rate(false_alarm_rate) if decide else None
        dataset = self._dataset(images, "score", skip_corrupt)
        for batch in self._stream(dataset, batch_size, f"[score] {images.label}"):
            tmap = tile_map(self.tiling, batch.tile_scores, self.maps)
            scores = image_scores(tmap, self.maps)
            pixels = pixel_map(self.tiling, batch.pixel_maps, self.maps) if with_maps else None
            amap = anomaly_map(tmap, pixels, self.maps) if with_maps else None
            p = self.calibration.p_values(scores) if self.calibration is not None else None
            flags = self.calibration.decide(scores, alpha) if alpha is not None else None
            worst = batch.tile_scores.argmax(dim=1)
            for j, pos in enumerate(batch.positions):
                index = dataset.indices[pos]
                parts = (batch.tile_scores[j].numpy(), None if batch.pixel_maps is None else batch.pixel_maps[j].numpy()) if keep_parts else None
                yield ImageScore(images.names[index], float(scores[j]), None if p is None else float(p[j]), None if flags is None else bool(flags[j]),
                                 int(worst[j]), batch.features[j, worst[j]].numpy(), None if amap is None else amap[j].numpy(), parts)

    def score(self, images: Any, false_alarm_rate: Optional[float] = None, batch_size: int = 16, with_maps: bool = True,
              skip_corrupt: bool = False) -> ScoreResult:
        """Scores, p-values, decisions and maps (at each input's resolution) of every image, in memory."""
        images = as_images(images)
        alpha = self.decision_rate(false_alarm_rate)
        if self.tiling.count > 1:
            self.say_estimate(len(images), f"[score] expected time for {len(images)} images")
        results = list(self.iter_scores(images, false_alarm_rate, batch_size, with_maps, skip_corrupt))
        by_name = {n: i for i, n in enumerate(images.names)}
        maps = [upsample(torch.from_numpy(r.map), _size(images, by_name[r.name])) for r in results] if with_maps else []
        has_p = self.calibration is not None
        return ScoreResult(
            files=[r.name for r in results], scores=np.array([r.score for r in results]),
            p_values=np.array([r.p_value for r in results]) if has_p else None,
            is_anomaly=np.array([r.is_anomaly for r in results], dtype=bool) if has_p else None,
            features=np.stack([r.features for r in results]) if results else np.zeros((0, len(self.scorer.feature_names))),
            feature_names=list(self.scorer.feature_names), maps=maps, false_alarm_rate=alpha if has_p else None,
        )

    @property
    def threshold(self) -> Optional[float]:
        """The image score above which an image is flagged at the fitted rate (None without calibration)."""
        return None if self.calibration is None else self.calibration.image_threshold()

    # ------------------------------------------------------------------ saving and loading
    def save(self, path: str | Path, force: bool = False) -> Path:
        """Write the detector folder; an existing detector folder is replaced only with `force`. The files are written into
        a sibling folder that is renamed into place, so an interrupted save never leaves a folder that looks complete."""
        import shutil

        if self.calibration is None:
            raise ConfigError("Only a detector fitted with AnomalyDetector.fit (with calibration) can be saved as a folder.")
        folder = Path(path)
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())) and not force:
            raise ConfigError(f"{folder} already exists and is not empty. Choose another folder, or pass --force (force=True) to replace it.")
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
        try:
            self._write_files(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        old = staging.with_name(staging.name.replace(".partial", ".old"))
        if folder.exists():  # moved aside first: a stop between the two renames leaves the old folder, never neither
            folder.rename(old)
        staging.rename(folder)
        if old.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        return folder

    def _write_files(self, folder: Path) -> None:
        from zsad.detection.card import write_card

        self.detector.save(folder / "detector")
        self.recipe.write(folder / "recipe.json")
        c = self.calibration
        np.savez(folder / "calibration.npz", scores=c.scores, **{k: v for k, v in (("map_quantiles", c.map_quantiles), ("map_maxima", c.map_maxima))
                                                                if v is not None})
        settings = {"format": FOLDER_FORMAT, "false_alarm_rate": self.false_alarm_rate, "threshold": self.threshold, "tiling": self.tiling.to_dict(),
                    "tile_position": self.tile_position, "maps": self.maps.to_dict(), "precision": self.precision, "info": self.info,
                    "network_evaluations_per_image": self.network_evaluations_per_image()}
        (folder / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
        write_card(folder, self)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", backbone: Optional[str] = None) -> "AnomalyDetector":
        """A detector folder written by `save` / `zsad fit`, or a prefix written by `zsad evaluate`; the weights are
        the recorded ones (or `backbone`, which must have the recorded sha256)."""
        path = Path(path)
        if path.is_dir():
            return _load_folder(cls, path, device, backbone)
        if path.with_suffix(".json").is_file():
            return _load_prefix(cls, path, device, backbone)
        raise DetectorFolderError(f"No detector at {path}: pass a folder written by `zsad fit` or a prefix written by `zsad evaluate` "
                                  "(…/detectors/<scorer>/<id>).")


def _checked(read: Any) -> Any:
    """`read()`, with an unreadable image file turned into an error that names it and the option to skip it."""
    from zsad.errors import CorruptImageError

    try:
        return read()
    except ZsadError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder error means an unreadable file
        raise CorruptImageError(f"Cannot read an image while sizing the run ({type(err).__name__}: {err}). Replace or delete the file, "
                                "or pass --skip-corrupt (skip_corrupt=True) to leave unreadable images out.") from None


def _readable_only(images: Images) -> tuple[Images, list[str]]:
    """The images that decode, and a description of each that does not."""
    probe = ImageDataset(images.label, "probe", images.source, lambda img: img, {}, skip_corrupt=True)
    return (images if not probe.skipped else images.subset(probe.indices)), probe.skipped


def _size(images: Images, index: int) -> tuple[int, int]:
    """(height, width) of input image `index` as stored."""
    width, height = images.source.load(index).size
    return height, width


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DetectorFolderError(f"{path} is missing: {path.parent} is not a complete detector folder. Fit it again with `zsad fit`.")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DetectorFolderError(f"{path} is damaged ({type(err).__name__}: {err}). Fit the detector again with `zsad fit`.") from None


def _backbone_for(recipe: FeatureRecipe, device: str, override: Optional[str]) -> tuple[Backbone, torch.device]:
    """The recorded weights (their file, else their name or hf:// address), or the override; checked by the recipe."""
    dev = resolve_device(device)
    spec = override or (recipe.weights_path if recipe.weights_path and Path(recipe.weights_path).is_file() else recipe.weights_source or recipe.weights_path)
    if not spec:
        raise RecipeMismatchError("The detector's recipe records no backbone file. Pass the backbone it was fitted with (--backbone / backbone.path=).")
    configure_precision(recipe.tf32)
    bb = load_backbone(spec, format=recipe.weights_format or "auto",
                       config=recipe.model_config if recipe.weights_format == "improved-diffusion" else None,
                       use_ema=bool(recipe.use_ema if recipe.use_ema is not None else True), device=dev, fast_path=recipe.fast_path)
    return bb, dev


def _check(recipe: FeatureRecipe, scorer: Scorer, bb: Backbone, dev: torch.device) -> None:
    """Compare the recorded recipe with what today's code records: the weights, the scorer's version and the live
    preprocessing version (a `zsad evaluate` prefix written before it recorded one differs, and is told to refit). The
    runtime fields (precision, TF32, fast path, compile) are the recorded ones, which loading applies, so they agree by
    construction."""
    live = {**recipe.preprocessing, "version": PREPROCESSING_VERSION}
    current = recipe_for(scorer, bb, live, recipe.seed, dev, recipe.precision, recipe.tf32, recipe.fast_path, recipe.compile)
    for message in recipe.check(current, "Pass the backbone the detector was fitted with (--backbone / backbone.path=), or refit the detector with this zsad."):
        warn(message)


def _scorer_of(recipe: FeatureRecipe) -> Scorer:
    options = {k: v for k, v in recipe.scorer.items() if k != "name"}
    return build_scorer(recipe.scorer_name, **options, network_batch=int(recipe.network_batch or 8))


def _load_folder(cls, folder: Path, device: str, backbone: Optional[str]) -> AnomalyDetector:
    settings = _read_json(folder / "settings.json")
    if settings.get("format") != FOLDER_FORMAT:
        found = settings.get("format")
        raise DetectorFolderError(f"{folder} is a detector folder of format {found}; this zsad reads format {FOLDER_FORMAT} (its tile maps, outline "
                                  "threshold and preprocessing changed, so the old scores and thresholds no longer apply). Fit it again with `zsad fit`."
                                  if isinstance(found, int) else f"{folder / 'settings.json'} is not a zsad detector folder. Fit it again with `zsad fit`.")
    recipe = FeatureRecipe.read(folder / "recipe.json")
    scorer = _scorer_of(recipe)
    try:
        detector = load_detector(folder / "detector")
        with np.load(folder / "calibration.npz", allow_pickle=False) as data:
            scores = data["scores"]
            quantiles = data["map_quantiles"] if "map_quantiles" in data else None
            maxima = data["map_maxima"] if "map_maxima" in data else None
        maps = MapSettings(**settings["maps"])
        # the typical map value is the colour scale's lower end, which calibration set (MapSettings.vmin)
        calibrated = Calibration(float(settings["false_alarm_rate"]), scores, maxima, None if maxima is None else maps.vmin, quantiles)
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise DetectorFolderError(f"{folder}: the detector or calibration file is damaged or missing ({type(err).__name__}: {err}). "
                                  "Fit the detector again with `zsad fit`.") from None
    tiling = Tiling.from_dict(settings["tiling"])
    if _normal_json(tiling.to_dict()) != _normal_json(recipe.preprocessing.get("tiles")):
        raise DetectorFolderError(f"{folder}: settings.json's tiling {tiling.to_dict()} differs from the recipe's {recipe.preprocessing.get('tiles')}: "
                                  "the folder was edited or mixed from two fits. Fit it again with `zsad fit`.")
    bb, dev = _backbone_for(recipe, device, backbone)
    _check(recipe, scorer, bb, dev)
    if str(recipe.device or "cpu").split(":")[0] != dev.type:
        # the recorded call size suits the device kind it was fitted on (a GPU's 256-row calls would pad a small image's few
        # tiles many-fold on a CPU): take the one `zsad fit` chooses here; features change by float rounding only
        scorer = replace(scorer, network_batch=_fit_call_size(dev, tiling.count, bb))
    tiled = TiledScorer(inner=scorer, tiling=tiling, seed=recipe.seed)
    return cls(bb, tiled, detector, recipe, maps, calibrated, bool(settings.get("tile_position")), settings.get("info"))


def _normal_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _load_prefix(cls, prefix: Path, device: str, backbone: Optional[str]) -> AnomalyDetector:
    """A `zsad evaluate` detector: whole images at the backbone's resolution, raw −log-likelihood scores, the
    scorer's own per-pixel maps, no calibration."""
    recipe_path = prefix.with_suffix(".recipe.json")
    if not recipe_path.is_file():
        raise RecipeMismatchError(f"{prefix}: no feature recipe ({recipe_path.name}) beside the detector: it was fitted by an older zsad. "
                                  "Refit it with `zsad evaluate`.")
    recipe = FeatureRecipe.read(recipe_path)
    scorer = _scorer_of(recipe)
    try:
        detector = load_detector(prefix)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        raise DetectorFolderError(f"{prefix}: the detector files are damaged ({type(err).__name__}: {err}). Refit it with `zsad evaluate`.") from None
    bb, dev = _backbone_for(recipe, device, backbone)
    _check(recipe, scorer, bb, dev)
    size = recipe.preprocessing["image_size"]
    tiling = Tiling.whole(int(size if isinstance(size, int) else size[0]))
    maps = MapSettings(combination="pixel" if scorer.map_meaning else "tile")
    return cls(bb, TiledScorer(inner=scorer, tiling=tiling, seed=recipe.seed), detector, replace(recipe), maps, None, False, {"source": str(prefix)})
