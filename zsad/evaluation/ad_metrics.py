"""Anomaly-detection metrics for MVTec-style evaluation: image level (AUROC, AUPR, F1-max, rates at a
decision threshold with Clopper–Pearson intervals) and pixel level (AUROC, AUPR, AUPRO).

Conventions (docs/method.md): scores are higher = more anomalous; the defect/anomalous class is the
positive one (label 1, mask pixel != 0), normal is 0. A metric whose definition needs a class that
the data lacks is None (never NaN, never an exception): e.g. every pixel metric of an all-normal test
set, or the detection rate when there is no defect image.

Image metrics are exact at any score scale (they equal sklearn's on the raw scores, whatever their
sign and magnitude). Pixel metrics come in two forms that share one curve definition:

* `PixelMetricAccumulator`: streaming and binned, memory O(bins) whatever the number of images
  (1024×1024 maps × hundreds of images). Thresholds are the `bins + 1` edges of `bins` equal bins
  over [low, high], fixed before the first update; a pixel is flagged at edge t when score >= t.
  Scores outside [low, high] are clipped into the first/last bin (counted in `n_clipped`), so the
  caller should pass a range that covers the scores (calibration maps, or a first pass).
* `pixel_metrics_exact`: unbinned, thresholds at every distinct score (flagged when score >= t),
  for small data and for tests. The binned curve is the exact curve sampled at the bin edges, so the
  two agree to within the curve's change inside one bin.

AUPRO (Bergmann et al., MVTec AD): regions are the 8-connected components of each image's ground
truth (`scipy.ndimage.label` with a 3×3 structure; scipy's default would be 4-connected), pooled
over all images. PRO(t) = mean over regions of the fraction of the region's pixels with score >= t,
so every region weighs the same whatever its size. FPR(t) runs over all mask-0 pixels of all images,
those of defect-free images included. The PRO-vs-FPR curve is integrated (trapezoid) from FPR 0 to
`max_fpr` = 0.3, linearly interpolated at 0.3, and divided by 0.3: a value in [0, 1].
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage
from scipy.stats import beta
from sklearn.metrics import average_precision_score, roc_auc_score

from zsad.evaluation.metrics import auroc

ArrayLike = Sequence[float] | np.ndarray

# 8-connectivity: two defect pixels touching at a corner belong to one defect region.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
MAX_FPR = 0.3
# Pixels binned per step of an update: keeps the float/index temporaries at a few MB whatever the map size.
_CHUNK = 1 << 18


# ---------------------------------------------------------------------------------------------------
# Image level
# ---------------------------------------------------------------------------------------------------


def _scores_labels(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(float64 scores, bool labels with defect = True), validated."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels.")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (defect).")
    if not np.isfinite(s).all():
        raise ValueError("anomaly scores must be finite.")
    return s, y.astype(bool)


def image_auroc(scores: ArrayLike, labels: ArrayLike) -> float | None:
    """Image AUROC, defect positive; None unless both classes are present."""
    s, y = _scores_labels(scores, labels)
    if y.all() or not y.any():
        return None
    return auroc(s[~y], s[y])  # rank-based: exact at any scale (metrics.py)


def image_aupr(scores: ArrayLike, labels: ArrayLike) -> float | None:
    """Image average precision (sklearn's step-wise AUPR), defect positive; None without defects."""
    s, y = _scores_labels(scores, labels)
    if not y.any():
        return None
    # sklearn itself only compares float64 scores (sort + distinct values): exact at any scale.
    return float(average_precision_score(y, s))


def f1_max_threshold(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float] | None:
    """(max F1 over thresholds, the highest threshold reaching it), flagged = score >= threshold; None without defects."""
    s, y = _scores_labels(scores, labels)
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    # Every distinct score is a threshold (precision_recall_curve's semantics); counts from the top.
    distinct, inverse = np.unique(s, return_inverse=True)
    pos = np.bincount(inverse, weights=y, minlength=len(distinct))[::-1]
    tot = np.bincount(inverse, minlength=len(distinct))[::-1]
    tp, flagged = np.cumsum(pos), np.cumsum(tot)
    # F1 = 2PR/(P+R) = 2TP/(flagged + positives): from integer counts, no 0/0 (flagged >= 1).
    f1 = 2 * tp / (flagged + n_pos)
    best = int(np.argmax(f1))  # first maximum from the top = the highest threshold
    return float(f1[best]), float(distinct[::-1][best])


def f1_max(scores: ArrayLike, labels: ArrayLike) -> float | None:
    """Maximum over thresholds of 2PR/(P+R), defect positive, flagged = score >= threshold; None without defects."""
    found = f1_max_threshold(scores, labels)
    return None if found is None else found[0]


def image_metrics(scores: ArrayLike, labels: ArrayLike) -> dict[str, float | None]:
    """{"image_auroc", "image_aupr", "image_f1_max"} for one category."""
    return {
        "image_auroc": image_auroc(scores, labels),
        "image_aupr": image_aupr(scores, labels),
        "image_f1_max": f1_max(scores, labels),
    }


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """Two-sided exact (Clopper–Pearson) interval for a binomial proportion k/n; None when n = 0."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}.")
    if n == 0:
        return None
    alpha = 1 - level
    # The closed ends are exact: at k = 0 (k = n) the beta quantile is undefined, the bound is 0 (1).
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def rate_ci(k: int, n: int, level: float = 0.95) -> dict[str, float | int | None]:
    """{"rate": k/n, "low", "high", "k", "n"} with a Clopper–Pearson interval; rate and bounds None when n = 0."""
    ci = clopper_pearson(k, n, level)
    return {
        "rate": None if n == 0 else k / n,
        "low": None if ci is None else ci[0],
        "high": None if ci is None else ci[1],
        "k": int(k),
        "n": int(n),
    }


def decision_rates(flagged: ArrayLike, labels: ArrayLike, level: float = 0.95) -> dict[str, dict]:
    """{"false_alarm": flagged normals / normals, "detection": flagged defects / defects}, each a `rate_ci` dict."""
    f = np.asarray(flagged).ravel()
    y = np.asarray(labels).ravel()
    if f.shape != y.shape:
        raise ValueError(f"{f.size} decisions but {y.size} labels.")
    if not (np.isin(f, (0, 1)).all() and np.isin(y, (0, 1)).all()):
        raise ValueError("decisions and labels must be boolean (0/1).")
    f, y = f.astype(bool), y.astype(bool)
    return {
        "false_alarm": rate_ci(int((f & ~y).sum()), int((~y).sum()), level),
        "detection": rate_ci(int((f & y).sum()), int(y.sum()), level),
    }


# ---------------------------------------------------------------------------------------------------
# Pixel level
# ---------------------------------------------------------------------------------------------------


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(region id per pixel, 0 = normal, 1..R = defect regions; R): 8-connected components of `mask != 0`."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a ground-truth mask must be 2-D, got shape {mask.shape}.")
    labels, n = ndimage.label(mask != 0, structure=EIGHT_CONNECTED)
    return labels, int(n)


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1])) / 2)


def _pro_area(fpr: np.ndarray, pro: np.ndarray, max_fpr: float) -> float:
    """Trapezoid area under PRO(FPR) from 0 to max_fpr (interpolated there), divided by max_fpr.

    fpr and pro are non-decreasing and start at (0, 0)."""
    k = int(np.searchsorted(fpr, max_fpr, side="right"))  # points with fpr <= max_fpr (>= 1: fpr[0] = 0)
    x, y = fpr[:k], pro[:k]
    if k < len(fpr) and x[-1] < max_fpr:
        x0, x1, y0, y1 = fpr[k - 1], fpr[k], pro[k - 1], pro[k]  # x0 <= max_fpr < x1
        x = np.append(x, max_fpr)
        y = np.append(y, y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0))
    return _trapezoid(y, x) / max_fpr


def _metrics_from_histograms(
    normal: np.ndarray, defect: np.ndarray, pro_mass: np.ndarray, n_regions: int, max_fpr: float
) -> dict[str, float | None]:
    """Pixel AUROC, AUPR, AUPRO from per-bucket counts (buckets in ascending score order).

    The thresholds are the bucket lower ends: flagged at bucket j = every pixel of buckets >= j. Tail
    sums from the top give, in ascending-FPR order, one curve point per bucket after (0, 0)."""
    n_neg, n_pos = int(normal.sum()), int(defect.sum())
    fp = np.concatenate([[0], np.cumsum(normal[::-1])])
    tp = np.concatenate([[0], np.cumsum(defect[::-1])])
    result: dict[str, float | None] = {"pixel_auroc": None, "pixel_aupr": None, "aupro": None}
    if n_pos == 0:
        return result
    tpr = tp / n_pos
    flagged = tp + fp
    # sklearn's AP: Σ (R_i − R_{i−1}) P_i; where nothing is flagged the recall step is 0 as well.
    precision = np.divide(tp, flagged, out=np.zeros(len(tp)), where=flagged > 0)
    result["pixel_aupr"] = float(np.sum(np.diff(tpr) * precision[1:]))
    if n_neg == 0:
        return result
    fpr = fp / n_neg
    result["pixel_auroc"] = _trapezoid(tpr, fpr)
    pro = np.concatenate([[0.0], np.cumsum(pro_mass[::-1])]) / n_regions
    result["aupro"] = _pro_area(fpr, np.minimum(pro, 1.0), max_fpr)  # min: float sums may overshoot 1 by ~1e-16
    return result


class PixelMetricAccumulator:
    """Streaming, binned pixel AUROC / AUPR / AUPRO: update() once per image, then result().

    Memory is three arrays of length `bins` (normal-pixel counts, defect-pixel counts, and per bin the
    sum over regions of (region's pixels in the bin / region size), which is all PRO needs), plus the
    temporaries of one image. Thresholds are the bin edges over [low, high]; a score outside the range
    is clipped into the first/last bin and counted in `n_clipped`."""

    def __init__(self, low: float, high: float, bins: int = 20_000, max_fpr: float = MAX_FPR) -> None:
        """Bins over [low, high], fixed before the first update (the caller knows the score range)."""
        if not (math.isfinite(low) and math.isfinite(high) and high > low):
            raise ValueError(f"need finite low < high, got ({low}, {high}).")
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}.")
        if not 0 < max_fpr <= 1:
            raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}.")
        self.low, self.high, self.bins, self.max_fpr = float(low), float(high), int(bins), float(max_fpr)
        self._scale = self.bins / (self.high - self.low)
        self.normal_hist = np.zeros(self.bins, dtype=np.int64)
        self.defect_hist = np.zeros(self.bins, dtype=np.int64)
        self.pro_mass = np.zeros(self.bins, dtype=np.float64)
        self.n_regions = 0
        self.n_images = 0
        self.n_clipped = 0

    @property
    def edges(self) -> np.ndarray:
        """The bins + 1 thresholds (bin edges), ascending."""
        return np.linspace(self.low, self.high, self.bins + 1)

    def update(self, score_map: np.ndarray, mask: np.ndarray) -> None:
        """Add one image: a [H, W] anomaly map and its [H, W] ground truth (defect = nonzero)."""
        score_map = np.asarray(score_map)
        mask = np.asarray(mask)
        if score_map.ndim != 2 or score_map.shape != mask.shape:
            raise ValueError(f"need a 2-D score map and a mask of the same shape, got {score_map.shape} and {mask.shape}.")
        regions, n = label_regions(mask)
        # Weight of a defect pixel = 1 / its region's size (index 0, normal pixels, weighs 0): summed
        # per bin, the tail sum over bins >= j is Σ_regions fraction of the region above edge j.
        sizes = np.bincount(regions.ravel(), minlength=n + 1).astype(np.float64)
        weight = np.zeros(n + 1)
        weight[1:] = 1.0 / sizes[1:]
        flat_s, flat_r = score_map.reshape(-1), regions.reshape(-1)
        normal = np.zeros(self.bins, dtype=np.int64)
        defect = np.zeros(self.bins, dtype=np.int64)
        pro_mass = np.zeros(self.bins, dtype=np.float64)
        clipped = 0
        for start in range(0, flat_s.size, _CHUNK):
            s = flat_s[start:start + _CHUNK].astype(np.float64)
            r = flat_r[start:start + _CHUNK]
            if not np.isfinite(s).all():
                raise ValueError("anomaly maps must be finite.")
            clipped += int(np.count_nonzero((s < self.low) | (s > self.high)))
            s -= self.low
            s *= self._scale
            np.floor(s, out=s)
            np.clip(s, 0, self.bins - 1, out=s)  # out of range → first/last bin; score == high → last bin
            idx = s.astype(np.intp)
            is_defect = r > 0
            all_counts = np.bincount(idx, minlength=self.bins)
            defect_counts = np.bincount(idx[is_defect], minlength=self.bins)
            defect += defect_counts
            normal += all_counts - defect_counts
            pro_mass += np.bincount(idx, weights=weight[r], minlength=self.bins)
        # Commit only after the whole image passed validation.
        self.normal_hist += normal
        self.defect_hist += defect
        self.pro_mass += pro_mass
        self.n_regions += n
        self.n_images += 1
        self.n_clipped += clipped

    @property
    def n_normal_pixels(self) -> int:
        """Mask-0 pixels seen so far (the FPR's denominator)."""
        return int(self.normal_hist.sum())

    @property
    def n_defect_pixels(self) -> int:
        """Mask-1 pixels seen so far."""
        return int(self.defect_hist.sum())

    def result(self) -> dict[str, float | None]:
        """{"pixel_auroc", "pixel_aupr", "aupro"}; each None when a class it needs is absent (e.g. no defect pixel)."""
        return _metrics_from_histograms(self.normal_hist, self.defect_hist, self.pro_mass, self.n_regions, self.max_fpr)


def pixel_metrics_exact(
    maps: Iterable[np.ndarray], masks: Iterable[np.ndarray], max_fpr: float = MAX_FPR
) -> dict[str, float | None]:
    """Unbinned pixel AUROC / AUPR (sklearn on all pixels) and AUPRO (every distinct score a threshold); small data only."""
    scores, region_ids, offset = [], [], 0
    for score_map, mask in zip(maps, masks, strict=True):
        score_map = np.asarray(score_map, dtype=np.float64)
        if score_map.ndim != 2 or score_map.shape != np.shape(mask):
            raise ValueError(f"need a 2-D score map and a mask of the same shape, got {score_map.shape} and {np.shape(mask)}.")
        regions, n = label_regions(mask)
        # Ids made unique across images: each image's regions are distinct from every other image's.
        region_ids.append(np.where(regions > 0, regions + offset, 0).ravel())
        scores.append(score_map.ravel())
        offset += n
    if not scores:
        raise ValueError("pixel metrics need at least one image.")
    s, r = np.concatenate(scores), np.concatenate(region_ids)
    if not np.isfinite(s).all():
        raise ValueError("anomaly maps must be finite.")
    y = r > 0
    result: dict[str, float | None] = {"pixel_auroc": None, "pixel_aupr": None, "aupro": None}
    if not y.any():
        return result
    result["pixel_aupr"] = float(average_precision_score(y, s))
    if y.all():
        return result
    result["pixel_auroc"] = float(roc_auc_score(y, s))
    # AUPRO: the histogram machinery with one bucket per distinct score is the exact threshold sweep.
    distinct, inverse = np.unique(s, return_inverse=True)
    sizes = np.bincount(r, minlength=offset + 1).astype(np.float64)
    weight = np.zeros(offset + 1)
    weight[1:] = 1.0 / sizes[1:]
    normal = np.bincount(inverse[~y], minlength=len(distinct))
    defect = np.bincount(inverse[y], minlength=len(distinct))
    pro_mass = np.bincount(inverse, weights=weight[r], minlength=len(distinct))
    result["aupro"] = _metrics_from_histograms(normal, defect, pro_mass, offset, max_fpr)["aupro"]
    return result


# ---------------------------------------------------------------------------------------------------
# Aggregation over categories
# ---------------------------------------------------------------------------------------------------


def mean_over_categories(per_category: Mapping[str, Mapping[str, float | None]]) -> dict[str, dict]:
    """Per metric {"mean", "n", "n_categories", "missing"}: the mean over the categories where it is not None."""
    metrics: list[str] = []
    for values in per_category.values():
        metrics += [m for m in values if m not in metrics]  # first-seen order, stable in reports
    summary = {}
    for metric in metrics:
        present = {c: v[metric] for c, v in per_category.items() if v.get(metric) is not None}
        summary[metric] = {
            "mean": float(np.mean(list(present.values()))) if present else None,
            "n": len(present),
            "n_categories": len(per_category),
            "missing": [c for c in per_category if c not in present],
        }
    return summary


def category_table(per_category: Mapping[str, Mapping[str, float | None]]) -> dict[str, dict]:
    """{"per_category": the results as given, "mean": `mean_over_categories` of them}."""
    return {"per_category": {c: dict(v) for c, v in per_category.items()}, "mean": mean_over_categories(per_category)}
