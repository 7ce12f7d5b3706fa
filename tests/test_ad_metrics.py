"""Anomaly-detection metrics (zsad/evaluation/ad_metrics.py) against oracles: sklearn for image AUROC/AUPR,
plain loops written here for F1-max and AUPRO, scipy's binomtest for Clopper–Pearson, hand-computed cases."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import binomtest
from sklearn.metrics import average_precision_score, roc_auc_score

from zsad.evaluation.ad_metrics import (
    PixelMetricAccumulator,
    category_table,
    clopper_pearson,
    decision_rates,
    f1_max,
    f1_max_threshold,
    image_aupr,
    image_auroc,
    image_metrics,
    mean_over_categories,
    pixel_metrics_exact,
    rate_ci,
    robust_edges,
)

PIXEL_KEYS = ("pixel_auroc", "pixel_aupr", "aupro")
FLOAT_MAX = float(np.finfo(np.float64).max)


# ---------------------------------------------------------------------------------------------------
# Independent slow implementations (plain loops, nothing shared with the module)
# ---------------------------------------------------------------------------------------------------


def slow_f1_max(scores, labels) -> float:
    """Every distinct score is a threshold; flagged = score >= t; F1 = 2PR/(P+R)."""
    n_pos = sum(1 for y in labels if y == 1)
    best = 0.0
    for t in set(scores):
        tp = sum(1 for s, y in zip(scores, labels) if s >= t and y == 1)
        fp = sum(1 for s, y in zip(scores, labels) if s >= t and y == 0)
        precision = tp / (tp + fp)
        recall = tp / n_pos
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        best = max(best, f1)
    return best


def slow_aupro(maps, masks, max_fpr: float = 0.3) -> float:
    """Regions: scipy.ndimage.label with a 3×3 structure per image. For every distinct score t (descending):
    PRO = mean over regions of mean(region scores >= t), FPR = (normal pixels >= t) / normal pixels,
    with numpy boolean masks. Curve from (0, 0); trapezoid up to max_fpr, interpolated there; / max_fpr."""
    regions = []  # (image index, boolean mask of one region)
    for i, mask in enumerate(masks):
        labelled, n = ndimage.label(np.asarray(mask, dtype=bool), structure=np.ones((3, 3)))
        for k in range(1, n + 1):
            regions.append((i, labelled == k))
    normals = [~np.asarray(m, dtype=bool) for m in masks]
    n_normal = sum(int(nm.sum()) for nm in normals)
    thresholds = sorted({float(v) for m in maps for v in np.ravel(m)}, reverse=True)
    points = [(0.0, 0.0)]
    for t in thresholds:
        fp = sum(int(((m >= t) & nm).sum()) for m, nm in zip(maps, normals))
        pro = np.mean([np.mean(maps[i][region] >= t) for i, region in regions])
        points.append((fp / n_normal, float(pro)))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


def binned(maps, masks, low=None, high=None, bins=20_000) -> dict:
    """The streaming accumulator over the given maps, range from a first pass unless given."""
    low = min(float(np.min(m)) for m in maps) if low is None else low
    high = max(float(np.max(m)) for m in maps) if high is None else high
    acc = PixelMetricAccumulator(low, high, bins=bins)
    for m, g in zip(maps, masks):
        acc.update(m, g)
    return acc.result()


def realistic_set(seed: int = 0, size: int = 128):
    """Irregular defect blobs of very different sizes (one pixel to ~15% of an image), an all-normal image,
    scores = smoothed mask × per-image strength + noise + per-image offset (some normal images read hot)."""
    rng = np.random.default_rng(seed)

    def blobs(sigma, frac):
        field = ndimage.gaussian_filter(rng.normal(size=(size, size)), sigma)
        return field > np.quantile(field, 1 - frac)

    masks = [blobs(8, 0.15), blobs(1.5, 0.02), np.zeros((size, size), bool), blobs(4, 0.05), np.zeros((size, size), bool), blobs(2.5, 0.01)]
    masks[2][size // 3, size // 2] = True  # a one-pixel defect
    band = slice(size * 3 // 4, size * 3 // 4 + max(size // 12, 2)), slice(size // 10, size // 2)
    masks[2][band] = blobs(3, 0.3)[band]  # an elongated one
    maps = []
    for i, m in enumerate(masks):
        strength = rng.uniform(0.5, 3.0)
        signal = ndimage.gaussian_filter(m.astype(float), rng.uniform(0.5, 3.0)) * strength
        maps.append(signal + rng.normal(0, 0.4, m.shape) + rng.uniform(-0.3, 0.5) + (0.8 if i == 4 else 0.0))
    return maps, masks


# ---------------------------------------------------------------------------------------------------
# Image level
# ---------------------------------------------------------------------------------------------------


def _image_data(seed=0, n=300):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    return rng.normal(0, 1, n) + 1.2 * y, y


@pytest.mark.parametrize(
    "transform",
    [lambda s: s, lambda s: s + 1e6, lambda s: s - 1e6, lambda s: s * 1e12, lambda s: -s * 1e12 - 1e6, lambda s: np.round(s, 1)],
    ids=["raw", "+1e6", "-1e6", "x1e12", "neg-scale", "ties"],
)
def test_image_auroc_aupr_equal_sklearn_at_any_scale(transform):
    s, y = _image_data()
    t = transform(s)
    assert image_auroc(t, y) == pytest.approx(roc_auc_score(y, t), abs=1e-9)
    assert image_aupr(t, y) == pytest.approx(average_precision_score(y, t), abs=1e-9)
    # The data is not trivial: a sigmoid-squashed implementation would read 0.5 at +1e6.
    assert abs(image_auroc(t, y) - 0.5) > 0.1


def test_image_metrics_one_image_per_class_and_missing_class():
    for normal, defect in [(0.2, 0.9), (0.9, 0.2), (5.0, 5.0), (1e6, 1e6 + 1e-4)]:
        s, y = np.array([normal, defect]), np.array([0, 1])
        assert image_auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-9)
        assert image_aupr(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-9)
    assert image_metrics([0.1, 0.2], [0, 0]) == {"image_auroc": None, "image_aupr": None, "image_f1_max": None}
    only_defects = image_metrics([0.1, 0.2], [1, 1])
    assert only_defects["image_auroc"] is None and only_defects["image_aupr"] == 1.0
    with pytest.raises(ValueError):
        image_auroc([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError):
        image_auroc([0.1, 0.2], [0, 2])


@pytest.mark.parametrize("seed", range(4))
def test_f1_max_equals_slow_loop(seed):
    rng = np.random.default_rng(seed)
    n = 60
    y = (rng.random(n) < 0.3).astype(int)
    y[0] = 1
    s = np.round(rng.normal(0, 1, n) + y, 1)  # rounding: many ties
    assert f1_max(s, y) == pytest.approx(slow_f1_max(list(s), list(y)), abs=1e-12)
    assert f1_max(s * 1e12 + 1e6, y) == pytest.approx(slow_f1_max(list(s * 1e12 + 1e6), list(y)), abs=1e-12)
    f1, threshold = f1_max_threshold(s, y)
    flagged = s >= threshold
    assert f1 == pytest.approx(2 * (flagged & (y == 1)).sum() / (flagged.sum() + y.sum()), abs=1e-12)


def test_f1_max_all_equal_scores_and_hand_case():
    y = [0, 1, 0, 1, 1]
    # One threshold flags everything: P = 3/5, R = 1, F1 = 2·0.6/1.6 = 0.75.
    assert f1_max([0.5] * 5, y) == pytest.approx(0.75, abs=1e-12)
    assert slow_f1_max([0.5] * 5, y) == pytest.approx(0.75, abs=1e-12)
    # Hand case: t = 0.8 flags {0.9, 0.8}: P = 1, R = ⅔, F1 = 0.8; t = 0.3 flags four: P = ¾, R = 1, F1 = 6/7 (the max).
    s = [0.9, 0.8, 0.7, 0.3, 0.1]
    labels = [1, 1, 0, 1, 0]
    assert f1_max(s, labels) == pytest.approx(6 / 7, abs=1e-12)
    assert f1_max_threshold(s, labels) == (pytest.approx(6 / 7, abs=1e-12), 0.3)
    # Equal maxima: the highest threshold reaching it is returned (t = 0.9: P 1, R ½; t = 0.1: P ½, R 1; both ⅔).
    assert f1_max_threshold([0.9, 0.5, 0.4, 0.1], [1, 0, 0, 1]) == (pytest.approx(2 / 3, abs=1e-12), 0.9)
    assert f1_max([0.1, 0.2], [0, 0]) is None


# ---------------------------------------------------------------------------------------------------
# Rates and Clopper–Pearson
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 10, 37])
def test_clopper_pearson_closed_ends(n):
    assert clopper_pearson(0, n) == (0.0, pytest.approx(1 - 0.025 ** (1 / n), abs=1e-12))
    assert clopper_pearson(n, n) == (pytest.approx(0.025 ** (1 / n), abs=1e-12), 1.0)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (1, 10), (5, 10), (9, 10), (10, 10), (3, 137), (120, 137), (1, 1)])
@pytest.mark.parametrize("level", [0.95, 0.9])
def test_clopper_pearson_equals_scipy_binomtest(k, n, level):
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    low, high = clopper_pearson(k, n, level)
    assert low == pytest.approx(ci.low, abs=1e-12) and high == pytest.approx(ci.high, abs=1e-12)


def test_decision_rates_counts_intervals_and_empty_class():
    flagged = np.array([1, 0, 0, 0, 1, 1, 1, 0], dtype=bool)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    rates = decision_rates(flagged, labels)
    assert rates["false_alarm"] == rate_ci(1, 4) and rates["false_alarm"]["rate"] == 0.25
    assert rates["detection"]["k"] == 3 and rates["detection"]["n"] == 4 and rates["detection"]["rate"] == 0.75
    lo, hi = clopper_pearson(3, 4)
    assert rates["detection"]["low"] == lo and rates["detection"]["high"] == hi and lo < 0.75 < hi
    # No defect image: detection rate undefined → None, not a division by zero.
    empty = decision_rates([True, False], [0, 0])["detection"]
    assert empty == {"rate": None, "low": None, "high": None, "k": 0, "n": 0}
    assert clopper_pearson(0, 0) is None
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)


# ---------------------------------------------------------------------------------------------------
# Pixel level: hand-computed cases (exact and binned must both give them)
# ---------------------------------------------------------------------------------------------------


def _both(maps, masks) -> list[dict]:
    """Exact, and binned with every distinct hand score in its own bin (then binned is exact too)."""
    return [pixel_metrics_exact(maps, masks), binned(maps, masks, low=0.0, high=1.0)]


def _case_a():
    # One region of 2 pixels (0.9, 0.5); normals 0.1, 0.2, 0.6, 0.3.
    return np.array([[0.1, 0.2, 0.6, 0.9, 0.5, 0.3]]), np.array([[0, 0, 0, 1, 1, 0]], bool)


def test_one_region_hand_computed():
    m, g = _case_a()
    # Curve: t=0.9 → (0, ½); 0.6 → (¼, ½); 0.5 → (¼, 1); 0.3 → (½, 1) …  Area to 0.3: ¼·½ + 0.05·1 = 0.175.
    for r in _both([m], [g]):
        assert r["aupro"] == pytest.approx(0.175 / 0.3, abs=1e-9)
        assert r["pixel_auroc"] == pytest.approx(7 / 8, abs=1e-9)  # 0.9 beats 4 normals, 0.5 beats 3
        # AP: t=0.9 recall ½ precision 1; t=0.5 recall 1 precision 2/3 → ½ + ½·⅔.
        assert r["pixel_aupr"] == pytest.approx(0.5 + 1 / 3, abs=1e-9)
    assert slow_aupro([m], [g]) == pytest.approx(0.175 / 0.3, abs=1e-12)


def test_regions_weigh_equally_not_by_pixel_count():
    # Region A: 1 pixel scored 0.5; region B: 20×20 = 400 pixels scored 0.9; 100 of 499 normals at 0.7.
    m, g = np.zeros((30, 30)), np.zeros((30, 30), bool)
    g[0, 0] = True
    m[0, 0] = 0.5
    g[5:25, 5:25] = True
    m[5:25, 5:25] = 0.9
    hot = np.flatnonzero(~g.ravel())[:100]
    m.ravel()[hot] = 0.7
    f = 100 / 499
    # Curve: 0.9 → (0, ½) [B found, A not: mean of 1 and 0]; 0.7 → (f, ½); 0.5 → (f, 1); 0 → (1, 1).
    expected = (0.5 * f + 1.0 * (0.3 - f)) / 0.3
    pixel_weighted = (400 / 401 * f + 1.0 * (0.3 - f)) / 0.3  # what a PRO weighted by pixel count would give
    assert abs(expected - pixel_weighted) > 0.3
    for r in _both([m], [g]):
        assert r["aupro"] == pytest.approx(expected, abs=1e-9)
    assert slow_aupro([m], [g]) == pytest.approx(expected, abs=1e-12)


def test_all_normal_image_counts_toward_fpr():
    m, g = _case_a()
    # An all-normal image whose one hot pixel (0.95) outranks every defect: 8 normals in all now.
    m2, g2 = np.array([[0.95, 0.05, 0.05, 0.05]]), np.zeros((1, 4), bool)
    # Curve: 0.95 → (⅛, 0); 0.9 → (⅛, ½); 0.6 → (¼, ½); 0.5 → (¼, 1); 0.3 → (⅜, 1).
    # Area to 0.3: ⅛·0 + ⅛·½ + 0.05·1 = 0.1125 (vs 0.175 if the normal image were skipped).
    for r in _both([m, m2], [g, g2]):
        assert r["aupro"] == pytest.approx(0.1125 / 0.3, abs=1e-9)
        assert r["pixel_auroc"] == pytest.approx(13 / 16, abs=1e-9)  # 0.9 beats 7 of 8 normals, 0.5 beats 6
    assert slow_aupro([m, m2], [g, g2]) == pytest.approx(0.1125 / 0.3, abs=1e-12)


def test_diagonal_pixels_are_one_region():
    # Diagonal pair (0,0)-(1,1): one region with 8-connectivity, two with scipy's default 4-connectivity.
    # A second region: the horizontal pair (3,2)-(3,3), scored 0.2. One normal at 0.5, the others 0.
    g = np.zeros((4, 4), bool)
    g[0, 0] = g[1, 1] = g[3, 2] = g[3, 3] = True
    m = np.zeros((4, 4))
    m[0, 0], m[1, 1], m[3, 2], m[3, 3] = 0.9, 0.2, 0.2, 0.2
    m[0, 3] = 0.5
    assert ndimage.label(g)[1] == 3  # scipy's default would split the diagonal pair
    # 8-connected: 0.9 → (0, ¼) [half of the pair, none of the other]; 0.5 → (1/12, ¼); 0.2 → (1/12, 1).
    expected = (0.25 / 12 + (0.3 - 1 / 12)) / 0.3
    four_connected = ((1 / 3) / 12 + (0.3 - 1 / 12)) / 0.3  # mean over 3 regions: (1 + 0 + 0)/3 at 0.9
    assert abs(expected - four_connected) > 0.02
    for r in _both([m], [g]):
        assert r["aupro"] == pytest.approx(expected, abs=1e-9)
    acc = PixelMetricAccumulator(0.0, 1.0)
    acc.update(m, g)
    assert acc.n_regions == 2


def test_all_normal_test_set_gives_none():
    maps = [np.random.default_rng(0).random((8, 8)) for _ in range(3)]
    masks = [np.zeros((8, 8), bool)] * 3
    none = dict.fromkeys(PIXEL_KEYS)
    assert pixel_metrics_exact(maps, masks) == none
    assert binned(maps, masks) == none


def test_regions_pooled_across_images():
    # The same 1-region image twice: 2 regions, and the result equals that of one copy (a mean of equal terms).
    m, g = _case_a()
    acc = PixelMetricAccumulator(0.0, 1.0)
    acc.update(m, g)
    acc.update(m, g)
    assert acc.n_regions == 2 and acc.n_images == 2 and acc.n_normal_pixels == 8 and acc.n_defect_pixels == 4
    assert acc.result()["aupro"] == pytest.approx(pixel_metrics_exact([m], [g])["aupro"], abs=1e-12)


# ---------------------------------------------------------------------------------------------------
# Pixel level: the module against the slow reference, and binned against exact
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_aupro_equals_slow_reference(seed):
    maps, masks = realistic_set(seed, size=24)
    maps = [np.round(m, 2) for m in maps]  # ties, and few enough thresholds for the slow loop
    exact = pixel_metrics_exact(maps, masks)
    assert exact["aupro"] == pytest.approx(slow_aupro(maps, masks), abs=1e-12)
    s = np.concatenate([m.ravel() for m in maps])
    y = np.concatenate([g.ravel() for g in masks])
    assert exact["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert exact["pixel_aupr"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert 0.0 < exact["aupro"] < 1.0


@pytest.mark.parametrize("bins", [10_000, 20_000])
@pytest.mark.parametrize("seed", range(2))
def test_binned_equals_exact_within_1e3(seed, bins):
    maps, masks = realistic_set(seed)
    exact = pixel_metrics_exact(maps, masks)
    approx = binned(maps, masks, bins=bins)
    diffs = {k: abs(approx[k] - exact[k]) for k in PIXEL_KEYS}
    print(f"seed={seed} bins={bins} exact={exact} max|binned-exact|={diffs}")
    assert max(diffs.values()) < 1e-3, diffs
    # Not a degenerate test set: the metrics sit away from 0 and 1.
    assert all(0.05 < exact[k] < 0.98 for k in PIXEL_KEYS), exact


def test_binned_clips_out_of_range_scores_into_end_bins():
    maps, masks = realistic_set(1, size=48)
    low, high = -0.2, 1.0  # narrower than the scores on purpose
    acc = PixelMetricAccumulator(low, high, bins=5_000)
    for m, g in zip(maps, masks):
        acc.update(m, g)
    outside = sum(int(((m < low) | (m > high)).sum()) for m in maps)
    assert acc.n_clipped == outside > 0
    # Clipping is the same as binning the clipped scores.
    assert acc.result() == binned([np.clip(m, low, high) for m in maps], masks, low, high, bins=5_000)


def test_update_rejects_bad_input_without_changing_state():
    acc = PixelMetricAccumulator(0.0, 1.0, bins=100)
    with pytest.raises(ValueError):
        acc.update(np.full((4, 4), np.nan), np.zeros((4, 4), bool))
    with pytest.raises(ValueError):
        acc.update(np.zeros((4, 4)), np.zeros((4, 5), bool))
    assert acc.n_images == 0 and acc.n_normal_pixels == 0
    with pytest.raises(ValueError):
        PixelMetricAccumulator(1.0, 1.0)


@pytest.mark.parametrize("bins", ["equal", "from_sample"])
def test_update_memory_is_bounded_for_a_megapixel_map(bins):
    # 32×32 = 1024 small regions: a per-region histogram (1024 × 20,000 × 8 B = 164 MB) or anything of
    # pixels × bins would blow the 64 MB budget.
    rng = np.random.default_rng(0)
    mask = np.zeros((1024, 1024), bool)
    for i in range(0, 1024, 32):
        for j in range(0, 1024, 32):
            mask[i:i + 3, j:j + 3] = True
    score = (rng.random((1024, 1024)) + mask).astype(np.float32)
    acc = PixelMetricAccumulator(0.0, 2.0, bins=20_000) if bins == "equal" else PixelMetricAccumulator.from_sample(score[::16, ::16])
    tracemalloc.start()
    try:
        acc.update(score, mask)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"peak extra memory of one 1024×1024 update: {peak / 2**20:.1f} MiB")
    assert peak < 64 * 2**20
    assert acc.n_regions == 1024 and acc.n_defect_pixels == 1024 * 9
    r = acc.result()
    assert r["pixel_auroc"] > 0.7 and r["aupro"] > 0.5


# ---------------------------------------------------------------------------------------------------
# Pixel level: bins from a sample, on heavy-tailed maps (the error bound, and the old equal bins failing)
# ---------------------------------------------------------------------------------------------------


def heavy_tailed_set(seed: int, n: int = 48, size: int = 32, sigma: float = 3.0, normal_only: bool = False, link=np.exp, tiny: bool = False):
    """n maps of link(sigma·z), z a smoothed standard normal field raised by 0.5–2.3 inside the defects: with
    link = exp, log-normal pixels (median 1, 99.99th percentile ~7e4). Two images in three hold a defect: a blob
    covering 0.5–10% of the image, or every sixth image a single pixel (all single pixels when tiny)."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(n):
        z = ndimage.gaussian_filter(rng.normal(size=(size, size)), 1.0)
        z /= z.std()
        mask = np.zeros((size, size), bool)
        if not normal_only and i % 3:
            if tiny or i % 6 == 1:
                mask[tuple(rng.integers(size, size=(2, 1 + 3 * tiny)))] = True
            else:
                field = ndimage.gaussian_filter(rng.normal(size=(size, size)), rng.uniform(1, 4))
                mask = field > np.quantile(field, 1 - rng.uniform(0.005, 0.1))
        maps.append(link(sigma * (z + rng.uniform(0.5, 2.3) * mask)))
        masks.append(mask)
    return maps, masks


def accumulate(acc: PixelMetricAccumulator, maps, masks) -> PixelMetricAccumulator:
    for m, g in zip(maps, masks):
        acc.update(m, g)
    return acc


def errors(acc: PixelMetricAccumulator, exact: dict) -> dict:
    r = acc.result()
    return {k: abs(r[k] - exact[k]) for k in PIXEL_KEYS}


def assert_within_bound(acc: PixelMetricAccumulator, exact: dict, tolerance: float = 1e-3) -> dict:
    """|binned − exact| within 1e-3 for each metric, within the reported bound (+ float rounding), bound < 1e-3."""
    err, bound = errors(acc, exact), acc.error_bounds()
    print(f"exact={exact} bins={acc.bins} error={err} bound={bound}")
    for k in PIXEL_KEYS:
        assert err[k] <= bound[k] + 1e-12, (k, err[k], bound[k])
        assert bound[k] < tolerance and err[k] < tolerance, (k, err[k], bound[k])
    assert acc.n_clipped == 0
    return err


def pooled(maps) -> np.ndarray:
    return np.concatenate([np.ravel(m) for m in maps])


@pytest.mark.parametrize("sample_kind", ["normal calibration maps", "maps with defects"])
@pytest.mark.parametrize("seed", range(2))
def test_sample_bins_on_lognormal_maps_within_1e3_where_equal_bins_fail(seed, sample_kind):
    maps, masks = heavy_tailed_set(seed)
    # Edges from other maps of the same kind, drawn separately (never the test maps themselves).
    sample, _ = heavy_tailed_set(1000 + seed, normal_only=sample_kind == "normal calibration maps")
    exact = pixel_metrics_exact(maps, masks)
    s = pooled(maps)
    assert s.max() / np.median(s) > 1e6 and len(maps) * 2 // 3 == sum(bool(g.any()) for g in masks)  # heavy tails, many defect images
    assert all(0.05 < exact[k] < 0.98 for k in PIXEL_KEYS), exact
    assert_within_bound(accumulate(PixelMetricAccumulator.from_sample(pooled(sample)), maps, masks), exact)
    # The old ways fail this very test: equal bins over [min, max] of the test maps (what zsad test did) ...
    old = errors(accumulate(PixelMetricAccumulator(float(s.min()), float(s.max())), maps, masks), exact)
    # ... and equal bins over the sample's [0.1%, 99.9%] quantiles, clipping what lies outside.
    low, high = np.quantile(pooled(sample), [0.001, 0.999])
    clipped = accumulate(PixelMetricAccumulator(low, high), maps, masks)
    print(f"equal bins over [min, max]: {old}; over the sample's quantiles: {errors(clipped, exact)}")
    assert max(old.values()) > 1e-3 and max(errors(clipped, exact).values()) > 1e-3 and clipped.n_clipped > 0
    # The bound still holds for them (it covers any binning, clipped end bins included).
    for acc in (clipped,):
        assert all(errors(acc, exact)[k] <= acc.error_bounds()[k] + 1e-12 for k in PIXEL_KEYS)


def test_one_huge_normal_pixel_among_twelve_maps():
    # The reported case: 12 maps of 32×32, one normal pixel at 1e5. Equal bins over [min, max] put almost
    # every other pixel into the first bin.
    maps, masks = realistic_set(0, size=32)
    more, more_masks = realistic_set(1, size=32)
    maps, masks = [m.copy() for m in maps + more], masks + more_masks
    assert not masks[4].any()
    maps[4][5, 7] = 1e5
    exact = pixel_metrics_exact(maps, masks)
    old = errors(accumulate(PixelMetricAccumulator(min(m.min() for m in maps), 1e5), maps, masks), exact)
    assert min(old.values()) > 0.1, old
    calibration = pooled(realistic_set(2, size=32)[0] + realistic_set(3, size=32)[0])  # no outlier in the sample
    assert_within_bound(accumulate(PixelMetricAccumulator.from_sample(calibration), maps, masks), exact)
    # With the test maps themselves as the sample, every distinct value gets its own bin: exact.
    acc = accumulate(PixelMetricAccumulator.from_sample(pooled(maps)), maps, masks)
    assert acc.error_bounds() == dict.fromkeys(PIXEL_KEYS, 0.0)
    assert all(e < 1e-12 for e in errors(acc, exact).values())


def test_negative_scores_far_beyond_the_sample_on_both_sides():
    # Sample: narrow, z-scores of calibration maps. Test maps: 1000·sinh(3z), heavy on both sides and
    # negative, plus pixels at ±1e300 and ±0.99 × the largest float, normal and defect.
    sample = pooled(heavy_tailed_set(7, normal_only=True, link=lambda x: x / 3)[0])
    maps, masks = heavy_tailed_set(8, link=lambda x: 1000 * np.sinh(x))
    maps = [m.copy() for m in maps]
    maps[0][0, :4] = [1e300, -1e300, 0.99 * FLOAT_MAX, -0.99 * FLOAT_MAX]
    defect_image = next(i for i, g in enumerate(masks) if g.sum() > 4)
    for value, (r, c) in zip([1e300, -1e300, -0.99 * FLOAT_MAX], np.argwhere(masks[defect_image])):
        maps[defect_image][r, c] = value
    s = pooled(maps)
    assert (s < sample.min()).sum() > 1000 and (s > sample.max()).sum() > 1000
    acc = accumulate(PixelMetricAccumulator.from_sample(sample), maps, masks)
    assert_within_bound(acc, pixel_metrics_exact(maps, masks))
    # Each pixel sits in the bin whose edges enclose it: nothing was clipped.
    idx = np.searchsorted(acc.edges, s, side="right") - 1
    assert (acc.edges[idx] <= s).all() and (s < np.append(acc.edges, np.inf)[idx + 1]).all()


def test_ties_in_maps_and_sample():
    # Scores rounded to integers: most pixels tie (0, 1, 2, …). Sample rounded alike, drawn separately.
    maps, masks = heavy_tailed_set(3, link=lambda x: np.floor(np.exp(x)))
    sample = pooled(heavy_tailed_set(4, link=lambda x: np.floor(np.exp(x)))[0])
    s = pooled(maps)
    assert (s == 0).mean() > 0.2 and len(np.unique(s)) < s.size / 10
    exact = pixel_metrics_exact(maps, masks)
    acc = accumulate(PixelMetricAccumulator.from_sample(sample), maps, masks)
    assert_within_bound(acc, exact)
    # Point masses of the sample get a bin of their own ([v, next float)), so the ties are exact there.
    assert {0.0, 1.0, 2.0} <= set(acc.edges) and {np.nextafter(0.0, 1), np.nextafter(1.0, 2)} <= set(acc.edges)
    # Only a few values: every one is a point mass of the sample, each bin holds one value, binned = exact.
    few = [np.minimum(m, 4.0) for m in maps]
    acc = accumulate(PixelMetricAccumulator.from_sample(np.minimum(sample, 4.0)), few, masks)
    assert acc.error_bounds() == dict.fromkeys(PIXEL_KEYS, 0.0)
    assert all(e < 1e-12 for e in errors(acc, pixel_metrics_exact(few, masks)).values())


def test_one_pixel_defect_regions():
    maps, masks = heavy_tailed_set(5, tiny=True)
    assert all(size <= 4 for g in masks for size in np.bincount(ndimage.label(g, np.ones((3, 3)))[0].ravel())[1:])
    sample = pooled(heavy_tailed_set(6, normal_only=True)[0])
    exact = pixel_metrics_exact(maps, masks)
    assert 0.05 < exact["aupro"] < 0.98
    assert_within_bound(accumulate(PixelMetricAccumulator.from_sample(sample), maps, masks), exact)


def test_sample_bins_all_normal_set_gives_none():
    maps, masks = heavy_tailed_set(0, n=6, normal_only=True)
    acc = accumulate(PixelMetricAccumulator.from_sample(pooled(maps)), maps, masks)
    assert acc.result() == acc.error_bounds() == dict.fromkeys(PIXEL_KEYS) == pixel_metrics_exact(maps, masks)


@pytest.mark.parametrize("seed", range(30))
def test_error_bound_bounds_the_error_of_coarse_bins(seed):
    # Few bins, so the errors are large: quantile edges of a small sample, or equal bins that clip.
    rng = np.random.default_rng(seed)
    maps, masks = heavy_tailed_set(seed, n=int(rng.integers(3, 12)), size=12, sigma=float(rng.uniform(0.5, 3)))
    if seed % 3 == 0:
        maps = [np.round(m, 0) for m in maps]  # ties
    exact = pixel_metrics_exact(maps, masks)
    s = pooled(maps)
    edges = np.unique(np.quantile(rng.choice(s, 50), np.linspace(0, 1, int(rng.integers(2, 30)))))
    for acc in [PixelMetricAccumulator(edges=edges), PixelMetricAccumulator(*np.quantile(s, [0.2, 0.9]), bins=int(rng.integers(1, 20)))]:
        accumulate(acc, maps, masks)
        err, bound = errors(acc, exact), acc.error_bounds()
        assert all(err[k] <= bound[k] + 1e-12 for k in PIXEL_KEYS), (err, bound)
        assert max(err.values()) > 1e-3 or seed % 3 == 0  # not vacuous: the bins matter here


def test_error_bound_is_reached():
    # One bin [0, 1): 10 normals at 0.1 below 5 defects of one region at 0.2. Exact: AUROC 1, AP 1, AUPRO 1.
    # Binned: every pixel at one threshold. The bound equals the error for each metric.
    m = np.array([[0.1] * 10 + [0.2] * 5])
    g = m > 0.15
    acc = accumulate(PixelMetricAccumulator(edges=[0.0]), [m], [g])
    err, bound = errors(acc, pixel_metrics_exact([m], [g])), acc.error_bounds()
    assert err == pytest.approx(bound, abs=1e-12) and err["pixel_auroc"] == pytest.approx(0.5)
    assert err["pixel_aupr"] == pytest.approx(1 - 5 / 15) and err["aupro"] == pytest.approx(1 - 0.15)
    # The AP bound's other side: 20 normals in a bin above; in the bin [0, 1), 2 normals above 30 distinct
    # defects. Exactly, the k-th defect has precision k / (22 + k); binned, all have 30 / 52. The bound
    # replaces the sum over k by an integral (midpoint rule): reached to within 1% here.
    m = np.array([[2.0] * 20 + [0.9, 0.95] + list(np.linspace(0.1, 0.5, 30))])
    g = m < 0.6
    acc = accumulate(PixelMetricAccumulator(edges=[0.0, 1.0]), [m], [g])
    err, bound = errors(acc, pixel_metrics_exact([m], [g])), acc.error_bounds()
    exact_ap = sum(k / (22 + k) for k in range(1, 31)) / 30
    assert err["pixel_aupr"] == pytest.approx(30 / 52 - exact_ap, abs=1e-12)
    assert err["pixel_aupr"] <= bound["pixel_aupr"] < 1.01 * err["pixel_aupr"]
    assert all(err[k] <= bound[k] + 1e-12 for k in PIXEL_KEYS)


@pytest.mark.parametrize(
    "sample",
    [np.random.default_rng(0).normal(size=1000), np.zeros(7), np.full(3, 1e300), np.array([-FLOAT_MAX, FLOAT_MAX]),
     np.array([1e-300, 2e-300, 5e-324]), np.random.default_rng(1).integers(0, 3, 500).astype(float), -np.exp(3 * np.random.default_rng(2).normal(size=50_000))],
    ids=["normal", "one value", "one huge value", "whole float range", "tiny", "three values", "negative lognormal"],
)
def test_robust_edges_reach_every_float_within_budget(sample):
    edges = robust_edges(sample, bins=20_000)
    assert np.isfinite(edges).all() and (np.diff(edges) > 0).all()
    assert edges[0] == -FLOAT_MAX and edges[-1] > 1e307
    assert len(edges) < 130_000  # O(100k): 20k quantile bins + log-spaced ones to ± the largest float
    # The sample's 20,000-quantiles are edges (to float rounding; numpy's overflow in the whole float range).
    with np.errstate(over="ignore", invalid="ignore"):
        q = np.quantile(sample, np.linspace(0, 1, 20_001))
    q = q[np.isfinite(q)]
    i = np.clip(np.searchsorted(edges, q), 1, len(edges) - 1)
    assert (np.minimum(abs(edges[i] - q), abs(edges[i - 1] - q)) <= 1e-12 * abs(sample).max()).all()
    acc = PixelMetricAccumulator(edges=edges)
    extremes = np.array([[-FLOAT_MAX, -1e300, -1.0, -5e-324, 0.0, 5e-324, 1e-300, 1.0, 1e300, FLOAT_MAX]])
    acc.update(extremes, extremes > 0)
    assert acc.n_clipped == 0 and acc.n_normal_pixels + acc.n_defect_pixels == extremes.size
    # Log-spaced edges: beyond one mean quantile bin from the median, the distance to it grows by at most
    # 0.1% from an edge to the next for 10^6 range widths, then by at most 5%.
    median, width = float(np.median(sample)), min(float(sample.max() / 2 - sample.min() / 2) * 2, FLOAT_MAX)
    width = width or abs(float(sample[0])) or 1.0
    with np.errstate(over="ignore"):
        sides = (edges[edges > median] - median, median - edges[edges < median][::-1])
    for side in sides:
        far = side[(side >= width / 20_000) & np.isfinite(side)]
        ratios = far[1:] / far[:-1]
        assert ratios.max() < 1.0501 and (ratios[far[1:] < 1e6 * width] < 1.0011).all()


def test_edges_constructor_clips_below_the_first_edge_and_validates():
    acc = PixelMetricAccumulator(edges=[0.0, 1.0, 2.0])
    acc.update(np.array([[-5.0, 0.5, 1.5, 1e9]]), np.array([[0, 1, 0, 1]]))
    assert acc.bins == 3 and acc.n_clipped == 1
    assert list(acc.normal_hist) == [1, 1, 0] and list(acc.defect_hist) == [1, 0, 1]  # -5 → first bin, 1e9 → last (open)
    # A first bin of one value ([0, next float)) is exact, unless clipped scores joined it.
    acc = accumulate(PixelMetricAccumulator(edges=[0.0, np.nextafter(0.0, 1.0), 1.0]), [np.array([[-1.0, 0.0, 0.5]])], [np.array([[0, 1, 0]])])
    err = errors(acc, pixel_metrics_exact([np.array([[-1.0, 0.0, 0.5]])], [np.array([[0, 1, 0]])]))
    assert acc.n_clipped == 1 and err["pixel_auroc"] == pytest.approx(0.25) and acc.error_bounds()["pixel_auroc"] >= err["pixel_auroc"]
    for bad in ([], [1.0, 1.0], [2.0, 1.0], [0.0, np.inf]):
        with pytest.raises(ValueError):
            PixelMetricAccumulator(edges=bad)
    with pytest.raises(ValueError):
        PixelMetricAccumulator(0.0, 1.0, edges=[0.0])
    with pytest.raises(ValueError):
        PixelMetricAccumulator.from_sample(np.array([0.0, np.nan]))


# ---------------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------------


def test_mean_over_categories_excludes_none_and_counts():
    per = {
        "bottle": {"image_auroc": 0.9, "aupro": 0.6},
        "cable": {"image_auroc": 0.7, "aupro": None},
        "grid": {"image_auroc": 0.8, "aupro": 0.8},
    }
    mean = mean_over_categories(per)
    assert mean["image_auroc"] == {"mean": pytest.approx(0.8), "n": 3, "n_categories": 3, "missing": []}
    assert mean["aupro"] == {"mean": pytest.approx(0.7), "n": 2, "n_categories": 3, "missing": ["cable"]}
    only_none = mean_over_categories({"a": {"aupro": None}})
    assert only_none["aupro"] == {"mean": None, "n": 0, "n_categories": 1, "missing": ["a"]}
    table = category_table(per)
    assert table["per_category"] == per and table["mean"] == mean
