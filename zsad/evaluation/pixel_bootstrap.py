"""Paired bootstrap intervals over test images for image AUROC, pixel AUROC and AUPRO (issue 26 §3).

A default changes only when a candidate setting's mean image AUROC and AUPRO hold against today's default,
judged by the paired 95% interval of their difference. Image AUROC resamples from the per-image scores alone;
pixel AUROC and AUPRO pool pixels and defect regions over the test images, so resampling images needs each
image's share of the pooled histograms:

* `ImagePixelHistograms`: per test image, on the bins of a `PixelMetricAccumulator` (the same edges and
  clipping rule for every image of a category), the image's histogram of normal-pixel scores, and for each
  connected defect region (`label_regions`: 8-connected) its histogram and its size. A defect-pixel histogram
  is the sum of its image's region histograms, so it is not stored twice. Only non-empty bins are kept
  (bin index int32, count uint16, or uint32 where a bin holds more pixels): memory grows with images × min(pixels, bins), never with the pixels
  themselves beyond that. Summing a multiset of images' histograms (weights = how often each image was
  drawn) rebuilds the accumulator of that multiset, and `ad_metrics`' own code gives the metrics; with every
  image once it is the streamed accumulator of the same maps (tests/test_pixel_bootstrap.py).
* `paired_bootstrap` / `paired_bootstrap_categories`: the same image indices drawn for settings A and B
  (stratified by label: each resample redraws the normal images among the normals and the defective among
  the defective, so every resample has both), Δ = B − A per resample, point Δ on all images once and the
  percentile interval. Over categories, every category's images are redrawn independently within each
  resample and Δ is that of the category means.

Files: `zsad test` with `IndustrialSettings.pixel_store` writes one `.npz` per category and method
(`save_run`); `load_runs` reads a test folder back; `experiments/paired_ad.py OUT_A OUT_B` prints the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from scipy import sparse
from scipy.stats import rankdata

from zsad.evaluation.ad_metrics import MAX_FPR, PixelMetricAccumulator, _metrics_from_histograms, image_auroc, label_regions

PAIRED_METRICS = ("image_auroc", "pixel_auroc", "aupro")
STORE_FOLDER = "pixel_store"  # under a `zsad test` output folder: <category>/<method>.npz
# Resamples whose dense (resamples × used bins) histograms are built at once: about 3 × 8 B × this × bins.
_CHUNK_BYTES = 48 << 20


class ImagePixelHistograms:
    """Per-image pixel histograms of one method on one category, on fixed bins shared by all its images.

    `like(acc)` takes the bins (and clipping rule) of a `PixelMetricAccumulator`; `add(map, mask)` once per test
    image, in test order; `accumulator(weights)` is the accumulator of the images taken `weights[i]` times each
    (result() and error_bounds() as streamed); `batch_metrics(weights)` the pixel metrics of many multisets."""

    def __init__(self, spec: Mapping[str, object], max_fpr: float = MAX_FPR) -> None:
        """spec: {"edges": ascending thresholds} or {"low", "high", "bins"} (equal bins), as `PixelMetricAccumulator` takes them."""
        self.spec = dict(spec)
        self.max_fpr = float(max_fpr)
        self._binner = self._empty()  # validates the spec; its bin rule places every added pixel
        self.n_bins = self._binner.bins
        self._images: list[tuple[np.ndarray, ...]] = []
        self._packed: Optional[dict[str, np.ndarray]] = None
        self._matrices: Optional[tuple] = None
        self._loaded = False  # read from a file: the per-image lists are gone, the packed arrays are the store

    @classmethod
    def like(cls, acc: PixelMetricAccumulator) -> "ImagePixelHistograms":
        """Empty store on the bins of `acc` (before or after its updates: the bins are fixed)."""
        spec: dict[str, object] = {"edges": acc.edges.copy()} if acc._edges is not None else {"low": acc.low, "high": acc.high, "bins": acc.bins}
        return cls(spec, acc.max_fpr)

    def _empty(self) -> PixelMetricAccumulator:
        if "edges" in self.spec:
            return PixelMetricAccumulator(edges=np.asarray(self.spec["edges"]), max_fpr=self.max_fpr)
        return PixelMetricAccumulator(float(self.spec["low"]), float(self.spec["high"]), int(self.spec["bins"]), self.max_fpr)

    # ------------------------------------------------------------------ building

    def add(self, score_map: np.ndarray, mask: np.ndarray) -> None:
        """One test image: its [H, W] anomaly map and [H, W] ground truth (defect = nonzero)."""
        if self._loaded:
            raise ValueError("a store read from a file is complete; build a new one to add images.")
        s = np.asarray(score_map, dtype=np.float64)
        mask = np.asarray(mask)
        if s.ndim != 2 or s.shape != mask.shape:
            raise ValueError(f"need a 2-D score map and a mask of the same shape, got {s.shape} and {mask.shape}.")
        if not np.isfinite(s).all():
            raise ValueError("anomaly maps must be finite.")
        regions, n = label_regions(mask)
        idx, clipped = self._binner._bin_index(s.ravel().copy())  # the accumulator's own bin rule (copy: it works in place)
        r = regions.ravel()
        normal = np.bincount(idx[r == 0], minlength=self.n_bins)
        normal_bin = np.flatnonzero(normal)
        # Region histograms: one sorted key per (region, bin) pair, counted; sizes from the same labels.
        defect = r > 0
        key = (r[defect].astype(np.int64) - 1) * self.n_bins + idx[defect]
        keys, counts = np.unique(key, return_counts=True)
        sizes = np.bincount(r[defect], minlength=n + 1)[1:]
        entries = np.bincount(keys // self.n_bins, minlength=n)  # non-empty bins of each region
        self._images.append((normal_bin.astype(np.int32), _small(normal[normal_bin]), entries.astype(np.int64),
                             (keys % self.n_bins).astype(np.int32), _small(counts), sizes.astype(np.int64), np.int64(clipped)))
        self._packed = self._matrices = None

    def _pack(self) -> dict[str, np.ndarray]:
        """CSR-style arrays over images (normal entries) and regions (region entries)."""
        if self._packed is not None:
            return self._packed
        imgs = self._images
        n_normal = np.array([len(i[0]) for i in imgs], dtype=np.int64)
        n_reg = np.array([len(i[5]) for i in imgs], dtype=np.int64)
        cat = (lambda k, dt: np.concatenate([i[k] for i in imgs]).astype(dt, copy=False) if imgs else np.zeros(0, dt))
        counts = (lambda k: np.concatenate([i[k] for i in imgs]) if imgs else np.zeros(0, np.uint16))  # uint16 unless one needs more
        self._packed = {
            "normal_ptr": np.concatenate([[0], np.cumsum(n_normal)]),
            "normal_bin": cat(0, np.int32),
            "normal_count": counts(1),
            "image_region_ptr": np.concatenate([[0], np.cumsum(n_reg)]),
            "region_size": cat(5, np.int64),
            "region_ptr": np.concatenate([[0], np.cumsum(cat(2, np.int64))]).astype(np.int64),
            "region_bin": cat(3, np.int32),
            "region_count": counts(4),
            "clipped": np.array([i[6] for i in imgs], dtype=np.int64),
        }
        # The per-image arrays become views of the packed ones, so the histograms are held once, not twice.
        p = self._packed
        for j, i in enumerate(imgs):
            a, b = p["normal_ptr"][j:j + 2]
            c, d = p["region_ptr"][p["image_region_ptr"][j]], p["region_ptr"][p["image_region_ptr"][j + 1]]
            imgs[j] = (p["normal_bin"][a:b], p["normal_count"][a:b], i[2], p["region_bin"][c:d], p["region_count"][c:d], i[5], i[6])
        return self._packed

    @property
    def n_images(self) -> int:
        return len(self._pack()["normal_ptr"]) - 1

    @property
    def n_regions(self) -> np.ndarray:
        """Defect regions per image."""
        return np.diff(self._pack()["image_region_ptr"])

    @property
    def nbytes(self) -> int:
        """Bytes of the stored histograms (what memory and the file grow with)."""
        return int(sum(a.nbytes for a in self._pack().values()))

    # ------------------------------------------------------------------ sums over a multiset of images

    def _weights(self, weights: Optional[Sequence[float] | np.ndarray]) -> np.ndarray:
        if weights is None:
            return np.ones(self.n_images)
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (self.n_images,) or (w < 0).any():
            raise ValueError(f"need {self.n_images} non-negative weights (one per image), got shape {w.shape}.")
        return w

    def accumulator(self, weights: Optional[Sequence[float] | np.ndarray] = None) -> PixelMetricAccumulator:
        """The `PixelMetricAccumulator` that streaming image i `weights[i]` times (default once) would have filled."""
        p, w = self._pack(), self._weights(weights)
        acc = self._empty()
        w_normal = np.repeat(w, np.diff(p["normal_ptr"]))
        acc.normal_hist = np.rint(np.bincount(p["normal_bin"], weights=w_normal * p["normal_count"], minlength=self.n_bins)).astype(np.int64)
        w_region = np.repeat(w, self.n_regions)
        w_entry = np.repeat(w_region, np.diff(p["region_ptr"]))
        acc.defect_hist = np.rint(np.bincount(p["region_bin"], weights=w_entry * p["region_count"], minlength=self.n_bins)).astype(np.int64)
        size_entry = np.repeat(p["region_size"], np.diff(p["region_ptr"])).astype(np.float64)
        acc.pro_mass = np.bincount(p["region_bin"], weights=w_entry * p["region_count"] / size_entry, minlength=self.n_bins)
        acc.n_regions = int(round(float(w @ self.n_regions)))
        acc.n_images = int(round(float(w.sum())))
        acc.n_clipped = int(round(float(w @ p["clipped"])))
        return acc

    def result(self, weights: Optional[Sequence[float] | np.ndarray] = None) -> dict[str, float | None]:
        """{"pixel_auroc", "pixel_aupr", "aupro"} of the multiset `weights` (default: every image once)."""
        return self.accumulator(weights).result()

    def _sparse(self) -> tuple[sparse.csc_matrix, sparse.csc_matrix, sparse.csc_matrix]:
        """(bins × images) normal counts, defect counts and PRO mass, on the bins some image uses (empty bins add
        only repeated curve points, which change no area)."""
        if self._matrices is None:
            p = self._pack()
            used = np.union1d(p["normal_bin"], p["region_bin"])
            normal_col = np.searchsorted(used, p["normal_bin"])
            region_col = np.searchsorted(used, p["region_bin"])
            n_img = self.n_images
            normal_img = np.repeat(np.arange(n_img), np.diff(p["normal_ptr"]))
            entry_img = np.repeat(np.repeat(np.arange(n_img), self.n_regions), np.diff(p["region_ptr"]))
            size_entry = np.repeat(p["region_size"], np.diff(p["region_ptr"])).astype(np.float64)
            shape = (len(used), n_img)
            normal = sparse.csc_matrix((p["normal_count"].astype(np.float64), (normal_col, normal_img)), shape=shape)
            defect = sparse.csc_matrix((p["region_count"].astype(np.float64), (region_col, entry_img)), shape=shape)
            pro = sparse.csc_matrix((p["region_count"] / size_entry, (region_col, entry_img)), shape=shape)
            self._matrices = (normal, defect, pro)
        return self._matrices

    def batch_metrics(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Pixel AUROC and AUPRO of each row of `weights` ([resamples, images]); NaN where a metric is undefined."""
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 2 or w.shape[1] != self.n_images:
            raise ValueError(f"need weights of shape [resamples, {self.n_images}], got {w.shape}.")
        normal, defect, pro = self._sparse()
        regions = w @ self.n_regions
        out = {"pixel_auroc": np.full(len(w), np.nan), "aupro": np.full(len(w), np.nan)}
        chunk = max(1, _CHUNK_BYTES // (24 * max(normal.shape[0], 1)))
        for start in range(0, len(w), chunk):
            wt = w[start:start + chunk].T
            hn, hd, hp = (np.asarray(m @ wt) for m in (normal, defect, pro))
            for j in range(hn.shape[1]):
                found = _metrics_from_histograms(hn[:, j], hd[:, j], hp[:, j], int(round(regions[start + j])), self.max_fpr)
                for key in out:
                    if found[key] is not None:
                        out[key][start + j] = found[key]
        return out

    # ------------------------------------------------------------------ files

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything needed to rebuild the store, as arrays."""
        p = dict(self._pack())
        p["max_fpr"] = np.float64(self.max_fpr)
        if "edges" in self.spec:
            p["edges"] = np.asarray(self.spec["edges"], dtype=np.float64)
        else:
            p["equal_bins"] = np.array([self.spec["low"], self.spec["high"], self.spec["bins"]], dtype=np.float64)
        return p

    @classmethod
    def from_arrays(cls, a: Mapping[str, np.ndarray]) -> "ImagePixelHistograms":
        if "edges" in a:
            spec: dict[str, object] = {"edges": np.asarray(a["edges"])}
        else:
            low, high, bins = np.asarray(a["equal_bins"]).tolist()
            spec = {"low": low, "high": high, "bins": int(bins)}
        store = cls(spec, float(a["max_fpr"]))
        keys = ("normal_ptr", "normal_bin", "normal_count", "image_region_ptr", "region_size", "region_ptr", "region_bin", "region_count", "clipped")
        store._packed = {k: np.asarray(a[k]) for k in keys}
        store._loaded = True
        return store


def _small(counts: np.ndarray) -> np.ndarray:
    """Pixel counts in uint16 when they fit (a bin of one image rarely holds 65,536 pixels), else uint32."""
    return counts.astype(np.uint16 if counts.size == 0 or counts.max() <= np.iinfo(np.uint16).max else np.uint32)


# ---------------------------------------------------------------------------------------------------
# One setting's results on one category, and its file
# ---------------------------------------------------------------------------------------------------


@dataclass
class CategoryRun:
    """One setting on one category's test images, in test order: image scores, labels, names, per-image pixel histograms."""

    scores: np.ndarray
    labels: np.ndarray
    names: Optional[list[str]] = None
    pixels: Optional[ImagePixelHistograms] = None

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.labels = np.asarray(self.labels).astype(int)
        if self.scores.shape != self.labels.shape or self.scores.ndim != 1:
            raise ValueError(f"{self.scores.shape} scores but {self.labels.shape} labels.")
        if self.pixels is not None and self.pixels.n_images != len(self.scores):
            raise ValueError(f"{len(self.scores)} images but pixel histograms of {self.pixels.n_images}.")


def save_run(path: Path | str, run: CategoryRun, pixels_from: Optional[str] = None) -> Path:
    """One .npz: names, labels, scores and (if any) the pixel histograms; `pixels_from`: the file stem, in the same folder,
    of the method whose maps this one shares (an image-score-only variant)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"names": np.array(run.names or [], dtype=str), "labels": run.labels.astype(np.int8), "scores": run.scores}
    if run.pixels is not None:
        arrays.update(run.pixels.arrays())
    if pixels_from:
        arrays["pixels_from"] = np.array(pixels_from)
    np.savez_compressed(path, **arrays)
    return path


def load_run(path: Path | str) -> CategoryRun:
    """A `save_run` file back (following `pixels_from` to the method whose maps it shares)."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as f:
        a = {k: f[k] for k in f.files}
    pixels = ImagePixelHistograms.from_arrays(a) if "normal_ptr" in a else None
    if pixels is None and "pixels_from" in a:
        pixels = load_run(path.with_name(f"{a['pixels_from']}.npz")).pixels
    names = [str(n) for n in a["names"]] or None
    return CategoryRun(a["scores"], a["labels"], names, pixels)


def method_stem(method: str) -> str:
    """A method's file stem, as the per-image score files name it."""
    return method.replace(" ", "_")


def load_runs(out: Path | str, method: str) -> dict[str, CategoryRun]:
    """{category: CategoryRun} of one method from a `zsad test` folder written with `pixel_store` on."""
    root = Path(out) / STORE_FOLDER
    name = f"{method_stem(method)}.npz"  # not a glob: method names have brackets ("diffpath_fused [map: tile]")
    found = {d.name: load_run(d / name) for d in sorted(root.iterdir()) if (d / name).is_file()} if root.is_dir() else {}
    if not found:
        raise FileNotFoundError(f"no {STORE_FOLDER}/<category>/{method_stem(method)}.npz under {out}: rerun `zsad test` with per-image "
                                "pixel histograms on (IndustrialSettings.pixel_store = True).")
    return found


# ---------------------------------------------------------------------------------------------------
# Paired bootstrap
# ---------------------------------------------------------------------------------------------------


@dataclass
class PairedDelta:
    """Δ = B − A of one metric: point values on all images once, and the percentile interval over resamples."""

    metric: str
    a: Optional[float]
    b: Optional[float]
    delta: Optional[float]
    low: Optional[float]
    high: Optional[float]
    n_resamples: int  # resamples where the metric was defined for both settings (all categories, for a mean)


def stratified_draws(labels: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[n_resamples, n] image indices: each class's images redrawn with replacement among that class (its count kept)."""
    labels = np.asarray(labels)
    draws = np.empty((n_resamples, len(labels)), dtype=np.int64)
    start = 0
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        draws[:, start:start + len(members)] = members[rng.integers(0, len(members), size=(n_resamples, len(members)))]
        start += len(members)
    return draws


def _counts(draws: np.ndarray, n: int) -> np.ndarray:
    """[resamples, n] how often each image was drawn."""
    rows = np.repeat(np.arange(len(draws)), draws.shape[1])
    return np.bincount(rows * n + draws.ravel(), minlength=len(draws) * n).reshape(len(draws), n).astype(np.float64)


def resampled_image_auroc(scores: np.ndarray, labels: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Image AUROC of each row of `draws` (image indices), defect positive, ties counting ½ (as `image_auroc`); NaN
    without both classes. All rows at once from mid-ranks (Mann–Whitney): a Python call per resample would dominate."""
    s, y = np.asarray(scores, dtype=np.float64)[draws], np.asarray(labels)[draws] == 1
    ranks = rankdata(s, axis=1)  # ties get their mean rank
    n1 = y.sum(axis=1).astype(np.float64)
    n0 = y.shape[1] - n1
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = ((ranks * y).sum(axis=1) - n1 * (n1 + 1) / 2) / (n0 * n1)
    return np.where((n0 > 0) & (n1 > 0), auc, np.nan)


def _check_pair(a: CategoryRun, b: CategoryRun, name: str) -> None:
    if len(a.scores) != len(b.scores) or not np.array_equal(a.labels, b.labels):
        raise ValueError(f"{name}: the two settings were tested on different images ({len(a.scores)} vs {len(b.scores)}, or other labels).")
    if a.names is not None and b.names is not None and a.names != b.names:
        raise ValueError(f"{name}: the two settings list different test images (or another order); pairing needs the same images.")


def _values(run: CategoryRun, counts: np.ndarray, draws: np.ndarray) -> dict[str, tuple[Optional[float], np.ndarray]]:
    """Per metric (point value on all images, value per resample with NaN where undefined)."""
    out: dict[str, tuple[Optional[float], np.ndarray]] = {}
    out["image_auroc"] = (image_auroc(run.scores, run.labels), resampled_image_auroc(run.scores, run.labels, draws))
    if run.pixels is None:
        for key in ("pixel_auroc", "aupro"):
            out[key] = (None, np.full(len(draws), np.nan))
    else:
        point = run.pixels.result()
        batch = run.pixels.batch_metrics(counts)
        for key in ("pixel_auroc", "aupro"):
            out[key] = (point[key], batch[key])
    return out


def _interval(metric: str, a: Optional[float], b: Optional[float], deltas: np.ndarray, level: float) -> PairedDelta:
    ok = deltas[np.isfinite(deltas)]
    if a is None or b is None or ok.size == 0:
        return PairedDelta(metric, a, b, None if a is None or b is None else b - a, None, None, int(ok.size))
    low, high = np.percentile(ok, [50 * (1 - level), 50 * (1 + level)])
    return PairedDelta(metric, a, b, b - a, float(low), float(high), int(ok.size))


def paired_bootstrap_categories(pairs: Mapping[str, tuple[CategoryRun, CategoryRun]], n_resamples: int = 1000,
                                seed: int | np.random.Generator = 0, level: float = 0.95) -> tuple[dict[str, dict[str, PairedDelta]], dict[str, PairedDelta]]:
    """(per category {metric: PairedDelta}, {metric: PairedDelta} of the category means), Δ = B − A.

    Within each resample every category's images are redrawn (stratified by label), the same indices for A and B;
    the mean's Δ is mean over categories of B − mean of A, over the categories where both settings define the metric
    (a resample where one of them is undefined is left out, and counted in n_resamples)."""
    if n_resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need n_resamples >= 1 and 0 < level < 1, got {n_resamples} and {level}.")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    per_category: dict[str, dict[str, PairedDelta]] = {}
    sums: dict[str, list] = {m: [] for m in PAIRED_METRICS}  # per metric: (a, b, deltas) of each category that has it
    for name, (a, b) in pairs.items():
        _check_pair(a, b, name)
        draws = stratified_draws(a.labels, n_resamples, rng)
        counts = _counts(draws, len(a.labels))
        va, vb = _values(a, counts, draws), _values(b, counts, draws)
        per_category[name] = {}
        for m in PAIRED_METRICS:
            (pa, ra), (pb, rb) = va[m], vb[m]
            per_category[name][m] = _interval(m, pa, pb, rb - ra, level)
            if pa is not None and pb is not None:
                sums[m].append((pa, pb, rb - ra))
    mean: dict[str, PairedDelta] = {}
    for m in PAIRED_METRICS:
        if not sums[m]:
            mean[m] = PairedDelta(m, None, None, None, None, None, 0)
            continue
        pa = float(np.mean([s[0] for s in sums[m]]))
        pb = float(np.mean([s[1] for s in sums[m]]))
        deltas = np.mean(np.stack([s[2] for s in sums[m]]), axis=0)  # NaN in any category leaves the resample out
        mean[m] = _interval(m, pa, pb, deltas, level)
    return per_category, mean


def paired_bootstrap(a: CategoryRun, b: CategoryRun, n_resamples: int = 1000, seed: int | np.random.Generator = 0,
                     level: float = 0.95) -> dict[str, PairedDelta]:
    """{metric: PairedDelta} of Δ = B − A on one category: image AUROC, pixel AUROC, AUPRO (None without histograms)."""
    per_category, _ = paired_bootstrap_categories({"": (a, b)}, n_resamples, seed, level)
    return per_category[""]
