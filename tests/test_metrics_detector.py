"""Metrics equal sklearn (the oracle) at any score scale; detectors separate clusters and round-trip."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from zsad.errors import ConfigError
from zsad.evaluation.metrics import auroc, bootstrap_auroc_ci, fpr_at_tpr, ood_metrics, rank_scores
from zsad.evaluation.metrics import roc_curve as metric_roc_curve
from zsad.scoring.detector import GMMDetector, KDEDetector, load_detector


def sklearn_metrics(id_s, ood_s) -> dict:
    """The oracle: sklearn on the raw scores, OOD positive (FPR@95 from the full ROC curve)."""
    y = np.r_[np.zeros(len(id_s)), np.ones(len(ood_s))]
    s = np.r_[id_s, ood_s]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return {
        "auroc": roc_auc_score(y, s) if 0 < y.sum() < len(y) else 0.5,
        "aupr_out": average_precision_score(y, s),
        "aupr_in": average_precision_score(1 - y, -s),
        "fpr95": float(fpr[tpr >= 0.95].min()),
        "curve": (fpr, tpr),
    }


def direct_fpr95(id_scores, ood_scores):
    """Threshold = the score of the ceil(0.95·n)-th highest OOD image; flagged = score >= threshold."""
    k = int(np.ceil(0.95 * len(ood_scores)))
    threshold = np.sort(ood_scores)[::-1][k - 1]
    return float(np.mean(id_scores >= threshold))


def _gauss(seed=0, n=500):
    rng = np.random.default_rng(seed)
    return rng.normal(50, 5, n), rng.normal(60, 5, n)


CASES = {
    # the scale of −log-likelihoods: torchmetrics alone squashed these to AUROC 0.505
    "n50_vs_n60": _gauss(),
    "offset_plus_1e6": tuple(a + 1e6 for a in _gauss(1)),
    "offset_minus_1e6": tuple(a - 1e6 for a in _gauss(2)),
    "scale_1e12": tuple(a * 1e12 for a in _gauss(3)),
    "negative_scale_1e12": tuple(-a * 1e12 for a in _gauss(4)),
    "tiny_1e-12": tuple(a * 1e-12 for a in _gauss(5)),
    "heavy_ties": tuple(np.round(a / 10) for a in _gauss(6)),
    "ties_across_sides": (np.array([1.0, 2, 2, 3, 3, 3]), np.array([2.0, 3, 3, 4])),
    "all_equal": (np.full(7, 42.0), np.full(5, 42.0)),
    "one_per_side_right": (np.array([100.0]), np.array([200.0])),
    "one_per_side_wrong": (np.array([200.0]), np.array([100.0])),
    "one_per_side_tied": (np.array([1e9]), np.array([1e9])),
    "unbalanced": (np.random.default_rng(7).normal(0, 1, 1000), np.random.default_rng(8).normal(1, 1, 3)),
    "small_range": (np.random.default_rng(9).normal(0, 1, 300), np.random.default_rng(10).normal(0.8, 1.3, 200)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_metrics_equal_sklearn_at_any_scale(case):
    id_s, ood_s = CASES[case]
    ref = sklearn_metrics(id_s, ood_s)
    m = ood_metrics(id_s, ood_s)
    for key in ("auroc", "aupr_in", "aupr_out", "fpr95"):
        assert m[key] == pytest.approx(ref[key], abs=1e-9), (key, m[key], ref[key])
    assert auroc(id_s, ood_s) == pytest.approx(ref["auroc"], abs=1e-9)
    assert fpr_at_tpr(id_s, ood_s) == pytest.approx(direct_fpr95(id_s, ood_s), abs=1e-9)
    fpr, tpr = metric_roc_curve(id_s, ood_s)
    np.testing.assert_allclose(fpr, ref["curve"][0], atol=1e-9, rtol=0)
    np.testing.assert_allclose(tpr, ref["curve"][1], atol=1e-9, rtol=0)
    assert auroc(-id_s, -ood_s) == pytest.approx(1 - ref["auroc"], abs=1e-9)


def test_large_scores_are_not_squashed():
    """The case of the trust issue: N(50, 5) vs N(60, 5) has AUROC ≈ 0.92, not 0.5."""
    id_s, ood_s = CASES["n50_vs_n60"]
    assert 0.90 < auroc(id_s, ood_s) < 0.95
    assert auroc(id_s, ood_s) == pytest.approx(auroc(id_s - 45, ood_s - 45), abs=1e-12)


def test_rank_map_keeps_order_and_ties():
    s = np.array([1e300, -1e300, 5.0, 5.0, 0.0, -0.0])
    r = rank_scores(s)
    assert r.min() > 0 and r.max() == 1.0
    assert np.array_equal(np.sign(r[:, None] - r[None, :]), np.sign(s[:, None] - s[None, :]))


def test_perfect_and_chance_separation():
    assert ood_metrics([0, 1, 2], [3, 4])["auroc"] == 1.0
    assert ood_metrics([0, 1, 2], [3, 4])["fpr95"] == 0.0
    assert fpr_at_tpr([5, 6, 7], [0, 1]) == 1.0
    assert ood_metrics([1, 1, 1], [1, 1])["auroc"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least one ID and one OOD"):
        ood_metrics([], [1.0])
    with pytest.raises(ValueError, match="non-finite"):
        ood_metrics([np.inf], [1.0])


def test_bootstrap_interval_contains_the_estimate_and_shrinks_with_data():
    rng = np.random.default_rng(0)
    small = bootstrap_auroc_ci(rng.normal(0, 1, 50), rng.normal(1, 1, 50), n_boot=300)
    big_id, big_ood = rng.normal(0, 1, 2000), rng.normal(1, 1, 2000)
    big = bootstrap_auroc_ci(big_id, big_ood, n_boot=300)
    assert big[0] <= auroc(big_id, big_ood) <= big[1]
    assert big[1] - big[0] < small[1] - small[0]
    assert bootstrap_auroc_ci(big_id, big_ood, n_boot=300, seed=3) == bootstrap_auroc_ci(big_id, big_ood, n_boot=300, seed=3)


@pytest.mark.parametrize("shift", [0.0, 1e6, -1e6])
def test_bootstrap_interval_at_large_scores_contains_sklearn_and_ignores_offsets(shift):
    id_s, ood_s = CASES["n50_vs_n60"]
    true = roc_auc_score(np.r_[np.zeros(len(id_s)), np.ones(len(ood_s))], np.r_[id_s, ood_s])
    lo, hi = bootstrap_auroc_ci(id_s + shift, ood_s + shift, n_boot=200)
    assert lo <= true <= hi and hi - lo < 0.1
    assert (lo, hi) == bootstrap_auroc_ci(id_s, ood_s, n_boot=200)
    # each resample equals sklearn on its raw scores: replay the first one
    rng = np.random.default_rng(0)
    a, b = id_s[rng.integers(0, len(id_s), len(id_s))], ood_s[rng.integers(0, len(ood_s), len(ood_s))]
    one = bootstrap_auroc_ci(id_s + shift, ood_s + shift, n_boot=1, level=0.0)
    assert one[0] == pytest.approx(roc_auc_score(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b]), abs=1e-9)


@pytest.mark.parametrize("mode", ["fast", "grid"])
def test_gmm_separates_two_clusters_and_round_trips(tmp_path, mode):
    rng = np.random.default_rng(0)
    train = rng.normal(0, 1, (300, 6))
    near, far = rng.normal(0, 1, (100, 6)), rng.normal(5, 1, (100, 6))
    det = GMMDetector(mode=mode, n_components=3, grid_components=[1, 3], cv_folds=5).fit(train)
    assert auroc(det.score(near), det.score(far)) > 0.99
    det.save(tmp_path / "det")
    assert (tmp_path / "det.json").is_file() and (tmp_path / "det.npz").is_file()
    again = load_detector(tmp_path / "det")
    assert np.array_equal(again.score(far), det.score(far))
    assert again.best_params_ == det.best_params_


def test_gmm_caps_components_and_needs_samples():
    rng = np.random.default_rng(0)
    with pytest.warns(UserWarning, match="only 8 ID-train samples"):
        det = GMMDetector(mode="fast", n_components=50).fit(rng.normal(size=(8, 2)))
    assert det.best_params_["gmm__n_components"] == 8
    with pytest.raises(ConfigError, match="at least 20 ID-train images; got 12.*detector.gmm.mode=fast"):
        GMMDetector(mode="grid").fit(rng.normal(size=(12, 3)))


def test_kde_detector_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    det = KDEDetector(bandwidth=0.5).fit(rng.normal(0, 1, 200))
    assert auroc(det.score(rng.normal(0, 1, 100)), det.score(rng.normal(6, 1, 100))) > 0.99
    det.save(tmp_path / "kde")
    assert np.array_equal(load_detector(tmp_path / "kde").score([0.1, 3.0]), det.score([0.1, 3.0]))


def test_grid_search_equals_sklearns_gridsearchcv():
    """The grid with a progress bar selects what GridSearchCV(cv=KFold(k)) selects, with the same scores."""
    from sklearn.mixture import GaussianMixture
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, 1, (150, 3)), rng.normal(4, 0.5, (90, 3))])
    det = GMMDetector(mode="grid", grid_components=[1, 2, 4], grid_covariances=["full", "diag", "spherical"], cv_folds=5).fit(x)
    make = lambda: Pipeline([("scaler", StandardScaler()), ("gmm", GaussianMixture(1, max_iter=200, reg_covar=1e-6, random_state=0))])  # noqa: E731
    ref = GridSearchCV(make(), {"gmm__n_components": [1, 2, 4], "gmm__covariance_type": ["full", "diag", "spherical"]}, cv=KFold(5), refit=False).fit(x)
    assert det.best_params_ == ref.best_params_
    ours = {(r["covariance_type"], r["n_components"]): r["mean_test_loglik"] for r in det.cv_results_}
    for params, score in zip(ref.cv_results_["params"], ref.cv_results_["mean_test_score"]):
        assert ours[(params["gmm__covariance_type"], params["gmm__n_components"])] == pytest.approx(score, rel=1e-12)


def test_grid_selection_on_a_subsample_refits_on_everything():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0, 1, (700, 2)), rng.normal(5, 0.5, (500, 2))])
    kw = dict(mode="grid", grid_components=[1, 2, 3], grid_covariances=["full", "spherical"], cv_folds=3)
    sub = GMMDetector(grid_max_samples=400, **kw).fit(x)
    assert sub.pipeline_["scaler"].n_samples_seen_ == len(x), "the chosen setting is refitted on all samples"
    assert sub.best_params_["gmm__n_components"] >= 2
    # small sets: exactly DiffPath's full grid (the subsample only applies above grid_max_samples)
    small = x[:300]
    a, b = GMMDetector(**kw).fit(small), GMMDetector(grid_max_samples=None, **kw).fit(small)
    assert a.best_params_ == b.best_params_ and a.cv_results_ == b.cv_results_
    assert np.array_equal(a.score(x), b.score(x))


def test_bootstrap_interval_of_the_mean_auroc_over_pairs():
    from zsad.evaluation.metrics import bootstrap_mean_auroc

    rng = np.random.default_rng(11)
    pairs = [(rng.normal(50, 5, 200), rng.normal(60, 5, 150)), (rng.normal(0, 1, 120), rng.normal(0.5, 1, 90))]
    true = np.mean([roc_auc_score(np.r_[np.zeros(len(i)), np.ones(len(o))], np.r_[i, o]) for i, o in pairs])
    lo, hi = bootstrap_mean_auroc(pairs, n_boot=200, seed=0)
    assert lo <= true <= hi and hi - lo < 0.1
    shifted = [(i + 1e6, o + 1e6) for i, o in pairs]
    assert bootstrap_mean_auroc(shifted, n_boot=200, seed=0) == (lo, hi), "ranks: offsets change nothing"


def test_paired_bootstrap_delta_equals_an_independent_sklearn_loop():
    """Δ mean AUROC of two settings on the same images: the point value and every resample equal a plain
    sklearn loop drawing the same indices; a setting against itself is exactly 0; pairing narrows the interval."""
    from sklearn.metrics import roc_auc_score

    from zsad.evaluation.metrics import bootstrap_mean_auroc, paired_bootstrap_delta

    rng = np.random.default_rng(3)
    pairs_b = [(rng.normal(0, 1, 40), rng.normal(1, 1, 30)), (rng.normal(0, 1, 25), rng.normal(0.5, 1, 35))]
    pairs_a = [(i + rng.normal(0, 0.3, len(i)) + 1e6, o + rng.normal(0, 0.3, len(o)) + 1e6) for i, o in pairs_b]  # correlated, other scale
    delta, lo, hi = paired_bootstrap_delta(pairs_a, pairs_b, n_boot=300, seed=7)

    def slow():
        r = np.random.default_rng(7)
        out = []
        for _ in range(300):
            total = 0.0
            for (ia, oa), (ib, ob) in zip(pairs_a, pairs_b):
                i, o = r.integers(0, len(ia), len(ia)), r.integers(0, len(oa), len(oa))
                y = np.r_[np.zeros(len(i)), np.ones(len(o))]
                total += roc_auc_score(y, np.r_[ia[i], oa[o]]) - roc_auc_score(y, np.r_[ib[i], ob[o]])
            out.append(total / len(pairs_a))
        return np.quantile(out, [0.025, 0.975])

    point = np.mean([roc_auc_score(np.r_[np.zeros(len(ia)), np.ones(len(oa))], np.r_[ia, oa])
                     - roc_auc_score(np.r_[np.zeros(len(ib)), np.ones(len(ob))], np.r_[ib, ob]) for (ia, oa), (ib, ob) in zip(pairs_a, pairs_b)])
    assert delta == pytest.approx(point, abs=1e-12) and [lo, hi] == pytest.approx(list(slow()), abs=1e-12)
    assert paired_bootstrap_delta(pairs_b, pairs_b, n_boot=50) == (0.0, 0.0, 0.0)
    a_lo, a_hi = bootstrap_mean_auroc(pairs_a, 300, seed=7)
    assert hi - lo < 0.6 * (a_hi - a_lo), "the paired interval is that of the difference, far narrower than one mean's"
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap_delta(pairs_a, [(pairs_b[0][0][:-1], pairs_b[0][1]), pairs_b[1]], n_boot=5)
