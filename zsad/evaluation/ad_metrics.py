"""Anomaly-detection metrics for MVTec-style evaluation: image level (AUROC, AUPR, F1-max, rates at a
decision threshold with Clopper–Pearson intervals) and pixel level (AUROC, AUPR, AUPRO).

Conventions (docs/method.md): scores are higher = more anomalous; the defect/anomalous class is the
positive one (label 1, mask pixel != 0), normal is 0. A metric whose definition needs a class that
the data lacks is None (never NaN, never an exception): e.g. every pixel metric of an all-normal test
set, or the detection rate when there is no defect image.

Image metrics are exact at any score scale (they equal sklearn's on the raw scores, whatever their
sign and magnitude). Pixel metrics come in two forms that share one curve definition:

* `PixelMetricAccumulator`: streaming and binned, memory O(bins) whatever the number of images
  (1024×1024 maps × hundreds of images). A pixel is flagged at threshold t when score >= t; the
  thresholds are the bin edges, fixed before the first update. A bin is an interval of scores, so the
  binned curve is the exact curve sampled at the edges, and `error_bounds()` says, from the histograms
  alone, how far each binned metric can be from exact (only pixels that share a bin can be misordered).
  Anomaly maps are heavy-tailed, so equal bins over [min, max] collapse: one hot pixel widens every
  bin, and most pixels share the first. Hence `from_sample`: edges at the quantiles of a sample of
  scores (calibration maps, a first batch), fine where its pixels are, plus edges log-spaced in the
  distance to its median (0.1% steps out to 10^6 range widths, then 5%) up to the largest float: no
  score is ever clipped, and the tails, inside and beyond the sample's range, stay resolved. The old
  form, equal bins over [low, high] that clip into the end bins (`n_clipped`), is kept.
* `pixel_metrics_exact`: unbinned, thresholds at every distinct score (flagged when score >= t),
  for small data and for tests.

AUPRO (Bergmann et al., MVTec AD): regions are the 8-connected components of each image's ground
truth (`scipy.ndimage.label` with a 3×3 structure; scipy's default would be 4-connected), pooled
over all images. PRO(t) = mean over regions of the fraction of the region's pixels with score >= t,
so every region weighs the same whatever its size. FPR(t) runs over all mask-0 pixels of all images,
those of defect-free images included. The PRO-vs-FPR curve is integrated (trapezoid) from FPR 0 to
`max_fpr` = 0.3, linearly interpolated at 0.3, and divided by 0.3: a value in [0, 1]. anomalib's
`AUPRO` (2.7) computes the same number (tests/test_anomalib_oracle.py).
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


def _error_bounds(
    normal: np.ndarray, defect: np.ndarray, pro_mass: np.ndarray, n_regions: int, max_fpr: float, one_value: np.ndarray | None = None
) -> dict[str, float | None]:
    """Largest |binned − exact| of each pixel metric that the per-bucket counts allow (see `error_bounds`).

    one_value: buckets that hold a single score value (all their pixels tie, as in the exact sweep)."""
    n_neg, n_pos = float(normal.sum()), float(defect.sum())
    result: dict[str, float | None] = {"pixel_auroc": None, "pixel_aupr": None, "aupro": None}
    if n_pos == 0:
        return result
    n, p = normal[::-1].astype(np.float64), defect[::-1].astype(np.float64)  # buckets from the top
    if one_value is not None:
        # A tie counts alike in both sweeps: such a bucket adds no error. Its counts stay in the sums above it.
        mixed = ~one_value[::-1]
    else:
        mixed = np.ones(len(n), dtype=bool)
    tp_above = np.cumsum(p) - p
    flagged_above = np.cumsum(n + p) - n - p
    # AUPR (sklearn's AP = Σ Δrecall · precision): a bucket gives p/P · (TPa + p)/(Fa + p + n); exactly,
    # its k-th defect from the top has precision (TPa + t)/(Fa + t + f) with k <= t <= p, 0 <= f <= n.
    # Largest: f = 0, t = p for all. Smallest: all n normals above, t = k, whose sum over k is at least
    # the integral from ½ to p + ½ (the summand is concave in k): p − (c − TPa)·log1p(p/(c + ½)), c = Fa + n.
    with np.errstate(divide="ignore", invalid="ignore"):
        over = np.where(p > 0, p * (tp_above + p) * n / ((flagged_above + p) * (flagged_above + p + n)), 0.0)
        c = flagged_above + n
        under = np.where(p > 1, (c - tp_above) * (np.log1p(p / (c + 0.5)) - p / (c + p)), 0.0)  # p = 1: exact
    result["pixel_aupr"] = float(np.sum(np.where(mixed, np.maximum(over, np.maximum(under, 0.0)), 0.0))) / n_pos
    if n_neg == 0:
        return result
    # Between two consecutive binned curve points, the exact curve is a monotone path inside the box they
    # span, and the chord (trapezoid) is off by at most half the box. AUROC: Σ ½ n_b p_b / (N P), reached
    # when each bucket's defects all lie above (or all below) its normals.
    result["pixel_auroc"] = float(0.5 * np.sum(np.where(mixed, n * p, 0.0)) / (n_neg * n_pos))
    # AUPRO: the box cut at max_fpr (width w of dx, fraction t = w/dx) allows w·dy·(1 − t/2), half the box
    # when it lies left of max_fpr, reached when the exact path rises at the box's left side.
    dx, dy = n / n_neg, pro_mass[::-1] / max(n_regions, 1)
    x0 = np.cumsum(dx) - dx
    w = np.clip(np.minimum(x0 + dx, max_fpr) - x0, 0.0, None)
    t = np.divide(w, dx, out=np.zeros_like(w), where=dx > 0)
    result["aupro"] = float(np.sum(np.where(mixed & (x0 < max_fpr), w * dy * (1 - t / 2), 0.0))) / max_fpr
    return result


# Log-spaced bins around a sample's median m: edges m ± d, d geometric. Fine: ratio 1.001 from one mean
# quantile bin, (max − min)/bins, to 10^6 range widths, so heavy-tailed scores 0.1% apart in their distance
# to m get their own bins, inside the sample's range (where its quantile bins thin out) and beyond it.
# Coarse: ratio 1.05 from there to the largest float, so that no finite score is ever clipped.
# About 24k + 14k edges a side for 20,000 quantile bins and a range width near 1; at most 28k + 30k.
_TAIL_FINE_RATIO = 1.001
_TAIL_FINE_SPAN = 1e6
_TAIL_COARSE_RATIO = 1.05
_FLOAT_MAX = float(np.finfo(np.float64).max)
# Samples above this size are thinned with a fixed stride before the quantiles (a sort of the sample).
_MAX_SAMPLE = 4_000_000


def _log_distances(width: float, bins: int) -> np.ndarray:
    """Ascending distances from the sample's median at which the log-spaced edges sit (see above)."""
    log_d0 = math.log(max(width / bins, np.finfo(np.float64).tiny))
    log_end = math.log(_FLOAT_MAX)
    log_fine_end = min(math.log(width) + math.log(_TAIL_FINE_SPAN), log_end)
    n_fine = max(math.ceil((log_fine_end - log_d0) / math.log(_TAIL_FINE_RATIO)), 1)
    n_coarse = max(math.ceil((log_end - log_fine_end) / math.log(_TAIL_COARSE_RATIO)), 1)
    logs = np.concatenate([np.linspace(log_d0, log_fine_end, n_fine + 1), np.linspace(log_fine_end, log_end, n_coarse + 1)[1:]])
    with np.errstate(over="ignore"):
        return np.exp(logs)


def robust_edges(sample: np.ndarray, bins: int = 20_000) -> np.ndarray:
    """Ascending thresholds: the sample's `bins`-quantiles (a point mass gets a bin of its own), log-spaced
    edges around its median out to ± the largest float, and the lowest float first (nothing falls below)."""
    s = np.asarray(sample).ravel()
    if s.size == 0:
        raise ValueError("need a non-empty sample of scores to place the bins.")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}.")
    if s.size > _MAX_SAMPLE:
        s = s[:: -(-s.size // _MAX_SAMPLE)]
    s = np.sort(s.astype(np.float64))  # once: np.quantile would partition once per level
    if not np.isfinite(s).all():
        raise ValueError("anomaly maps must be finite.")
    a, b, median = float(s[0]), float(s[-1]), float(np.median(s))
    # The quantiles (numpy's default, linear interpolation between order statistics), in half-steps so that
    # no difference of two floats overflows.
    pos = np.linspace(0.0, s.size - 1.0, bins + 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, s.size - 1)
    step = (s[hi] / 2 - s[lo] / 2) * (pos - lo)
    core = np.clip(s[lo] + step + step, s[lo], s[hi])
    # A value that fills several quantiles is a point mass (ties): [v, next float) holds exactly it.
    atoms = np.unique(core[1:][core[1:] == core[:-1]])
    width = b / 2 - a / 2
    width = min(2 * width, _FLOAT_MAX) if width > 0 else (abs(a) or 1.0)  # one value: its magnitude is the scale
    d = _log_distances(width, bins)
    with np.errstate(over="ignore", invalid="ignore"):
        edges = np.concatenate([[-_FLOAT_MAX], median - d, core, np.nextafter(atoms, np.inf), median + d])
    return np.unique(edges[np.isfinite(edges)])


class PixelMetricAccumulator:
    """Streaming, binned pixel AUROC / AUPR / AUPRO: update() once per image, then result() and error_bounds().

    Memory is three arrays of one value per bin (normal-pixel counts, defect-pixel counts, and per bin the
    sum over regions of (region's pixels in the bin / region size), which is all PRO needs), plus the
    temporaries of one image. Two ways to place the bins:

    * `PixelMetricAccumulator.from_sample(sample)` (or `edges=`): bin i holds the scores in
      [edges[i], edges[i+1]), the last bin everything >= edges[-1]; `from_sample` starts at the lowest
      float, so nothing is clipped.
    * `PixelMetricAccumulator(low, high, bins)`: `bins` equal bins over [low, high]; a score outside
      is clipped into the first/last bin and counted in `n_clipped`."""

    def __init__(
        self, low: float | None = None, high: float | None = None, bins: int = 20_000, max_fpr: float = MAX_FPR, *, edges: ArrayLike | None = None
    ) -> None:
        """Equal bins over [low, high], or the given ascending `edges` (thresholds); fixed before the first update."""
        if not 0 < max_fpr <= 1:
            raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}.")
        self._edges: np.ndarray | None = None
        if edges is not None:
            if low is not None or high is not None:
                raise ValueError("give either edges or (low, high), not both.")
            e = np.asarray(edges, dtype=np.float64).ravel()
            if e.size < 1 or not np.isfinite(e).all() or (np.diff(e) <= 0).any():
                raise ValueError("edges must be finite and strictly increasing.")
            self._edges = e
            self.low, self.high, self.bins = float(e[0]), None, int(e.size)
        else:
            if low is None or high is None or not (math.isfinite(low) and math.isfinite(high) and high > low):
                raise ValueError(f"need finite low < high, got ({low}, {high}).")
            if bins < 1:
                raise ValueError(f"bins must be >= 1, got {bins}.")
            self.low, self.high, self.bins = float(low), float(high), int(bins)
            self._scale = self.bins / (self.high - self.low)
        self.max_fpr = float(max_fpr)
        self.normal_hist = np.zeros(self.bins, dtype=np.int64)
        self.defect_hist = np.zeros(self.bins, dtype=np.int64)
        self.pro_mass = np.zeros(self.bins, dtype=np.float64)
        self.n_regions = 0
        self.n_images = 0
        self.n_clipped = 0

    @classmethod
    def from_sample(cls, sample: ArrayLike, bins: int = 20_000, max_fpr: float = MAX_FPR) -> "PixelMetricAccumulator":
        """Bins robust to heavy tails: `bins` quantile bins of a sample of scores (e.g. calibration maps, any
        shape) and log-spaced bins out to ± the largest float (`robust_edges`); about 100k bins in all."""
        return cls(edges=robust_edges(np.asarray(sample), bins), max_fpr=max_fpr)

    @property
    def edges(self) -> np.ndarray:
        """The thresholds, ascending: `edges=` as given (one per bin), or the bins + 1 edges of equal bins."""
        if self._edges is not None:
            return self._edges
        return np.linspace(self.low, self.high, self.bins + 1)

    def _bin_index(self, s: np.ndarray) -> tuple[np.ndarray, int]:
        """(bin of each float64 score, how many were clipped); modifies s."""
        if self._edges is not None:
            idx = np.searchsorted(self._edges, s, side="right") - 1
            clipped = int(np.count_nonzero(idx < 0))  # below the first edge (never with from_sample)
            np.maximum(idx, 0, out=idx)
            return idx, clipped
        clipped = int(np.count_nonzero((s < self.low) | (s > self.high)))
        s -= self.low
        s *= self._scale
        np.floor(s, out=s)
        np.clip(s, 0, self.bins - 1, out=s)  # out of range → first/last bin; score == high → last bin
        return s.astype(np.intp), clipped

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
            idx, k = self._bin_index(s)
            clipped += k
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

    def error_bounds(self) -> dict[str, float | None]:
        """Per metric, the largest |result() − pixel_metrics_exact(same maps)| these histograms allow; None as in result().

        Only pixels sharing a bin can be misordered: AUROC ½ Σ_b normal_b·defect_b / (N·P), reached when each
        bin's defects all lie above its normals; AUPRO the same half-box per bin (box = the bin's FPR step ×
        its PRO step; cut at max_fpr) summed up to max_fpr, / max_fpr; AUPR the precision range of each bin's
        defects given its counts. A bin of one value adds nothing. Covers any binning (clipped end bins too),
        up to float rounding (~1e-12)."""
        one_value = None
        if self._edges is not None:  # [e, next float after e) holds one value; the last bin is open above
            one_value = np.append(np.nextafter(self._edges[:-1], np.inf) == self._edges[1:], False)
            one_value[0] &= self.n_clipped == 0  # clipped scores joined the first bin
        return _error_bounds(self.normal_hist, self.defect_hist, self.pro_mass, self.n_regions, self.max_fpr, one_value)


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
