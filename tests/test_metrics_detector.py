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


# --------------------------------------------------------------------------- bootstrap over pairs that share sets
def _direct_bootstrap(setting_a, setting_b, names, sizes, n_boot, seed):
    """The documented draw, written out: per resample, each distinct set (in order of first use, ID before OOD, pair
    by pair) draws its indices once, and every pair that uses the set takes those; sklearn's AUROC on the raw scores.
    Returns the percentile interval of mean AUROC(a) − mean AUROC(b) (b=None: of mean AUROC(a))."""
    r = np.random.default_rng(seed)
    order = list(dict.fromkeys(s for pair in names for s in pair))
    values = []
    for _ in range(n_boot):
        idx = {s: r.integers(0, sizes[s], sizes[s]) for s in order}
        total = 0.0
        for k, (x, y) in enumerate(names):
            i, o = idx[x], idx[y]
            lab = np.r_[np.zeros(len(i)), np.ones(len(o))]
            total += roc_auc_score(lab, np.r_[setting_a[k][0][i], setting_a[k][1][o]])
            if setting_b is not None:
                total -= roc_auc_score(lab, np.r_[setting_b[k][0][i], setting_b[k][1][o]])
        values.append(total / len(names))
    return list(np.quantile(values, [0.025, 0.975]))


def _scored(rng, names, sizes, shift=1.0):
    """Scores of each named pair: ID images N(0, 1), OOD images N(shift, 1), at a large offset (ranks must not care)."""
    return [(rng.normal(0, 1, sizes[x]) + 1e6, rng.normal(shift, 1, sizes[y]) + 1e6) for x, y in names]


def test_a_shared_set_is_redrawn_once_for_every_pair_that_uses_it():
    """A's test images are ID in (A, B) and (A, C) and OOD in (C, A): one draw of A's indices per resample serves all
    three pairs. The function equals the loop written out here, for the mean and for the paired Δ."""
    from zsad.evaluation.metrics import bootstrap_mean_auroc, paired_bootstrap_delta

    rng = np.random.default_rng(21)
    names, sizes = [("A", "B"), ("C", "A"), ("B", "C"), ("A", "C")], {"A": 30, "B": 25, "C": 20}
    b = _scored(rng, names, sizes)
    a = [(i + rng.normal(0, 0.5, len(i)), o + rng.normal(0, 0.5, len(o))) for i, o in b]
    assert list(bootstrap_mean_auroc(a, 150, seed=4, sets=names)) == pytest.approx(_direct_bootstrap(a, None, names, sizes, 150, 4), abs=1e-12)
    delta, lo, hi = paired_bootstrap_delta(a, b, 150, seed=4, sets=names)
    assert [lo, hi] == pytest.approx(_direct_bootstrap(a, b, names, sizes, 150, 4), abs=1e-12)
    assert delta == pytest.approx(np.mean([auroc(*p) - auroc(*q) for p, q in zip(a, b)]), abs=1e-15)  # the point value ignores the draws
    assert (lo, hi) != paired_bootstrap_delta(a, b, 150, seed=4)[1:], "naming the sets changes the draws"


def test_with_no_set_shared_the_draws_are_those_of_independent_pairs():
    """Four distinct sets: naming them gives exactly the result without names (each pair's ID, then OOD images drawn
    in turn, the same seed stream), and both equal the loop written out here."""
    from zsad.evaluation.metrics import bootstrap_mean_auroc, paired_bootstrap_delta

    rng = np.random.default_rng(8)
    names, sizes = [("A", "B"), ("C", "D")], {"A": 30, "B": 22, "C": 18, "D": 26}
    b = _scored(rng, names, sizes, shift=0.7)
    a = [(i + rng.normal(0, 0.4, len(i)), o + rng.normal(0, 0.4, len(o))) for i, o in b]
    named, unnamed = bootstrap_mean_auroc(a, 120, seed=9, sets=names), bootstrap_mean_auroc(a, 120, seed=9)
    assert named == unnamed and list(named) == pytest.approx(_direct_bootstrap(a, None, names, sizes, 120, 9), abs=1e-12)
    named, unnamed = paired_bootstrap_delta(a, b, 120, seed=9, sets=names), paired_bootstrap_delta(a, b, 120, seed=9)
    assert named == unnamed and list(named[1:]) == pytest.approx(_direct_bootstrap(a, b, names, sizes, 120, 9), abs=1e-12)


def test_sharing_a_set_widens_the_interval_of_the_mean():
    """One small ID set A against three large OOD sets: A's resampling moves all three AUROCs (and Δs) together, so
    the shared-set interval is wider than the one that resamples each pair's copy of A on its own (about √3 here)."""
    from zsad.evaluation.metrics import bootstrap_mean_auroc, paired_bootstrap_delta

    rng = np.random.default_rng(5)
    names = [("A", "B"), ("A", "C"), ("A", "D")]
    u, v = rng.normal(0, 1, 40), rng.normal(0, 1, 40)  # per image of A: how typical it is; how the two settings differ on it
    b = [(u + rng.normal(0, 0.1, 40), rng.normal(2.5, 1, 1500)) for _ in names]
    a = [(i + 0.8 * v, o + rng.normal(0, 0.1, 1500)) for i, o in b]
    shared, alone = bootstrap_mean_auroc(b, 400, seed=1, sets=names), bootstrap_mean_auroc(b, 400, seed=1)
    assert shared[1] - shared[0] > 1.5 * (alone[1] - alone[0]), (shared, alone)  # 1.90 times
    shared, alone = paired_bootstrap_delta(a, b, 400, seed=1, sets=names), paired_bootstrap_delta(a, b, 400, seed=1)
    assert shared[2] - shared[1] > 1.5 * (alone[2] - alone[1]), (shared, alone)  # 1.81 times
    assert shared[0] == alone[0]


def test_set_names_that_cannot_describe_the_pairs_are_refused():
    from zsad.evaluation.metrics import bootstrap_mean_auroc, paired_bootstrap_delta

    rng = np.random.default_rng(0)
    pairs = [(rng.normal(0, 1, 10), rng.normal(1, 1, 12)), (rng.normal(0, 1, 11), rng.normal(1, 1, 12))]
    with pytest.raises(ValueError, match="set 'A' has 10 scores in one pair and 11"):
        bootstrap_mean_auroc(pairs, 5, sets=[("A", "B"), ("A", "C")])
    with pytest.raises(ValueError, match="one set as both ID and OOD"):
        paired_bootstrap_delta(pairs, pairs, 5, sets=[("A", "B"), ("C", "C")])
    with pytest.raises(ValueError, match="1 .* names for 2 pairs"):
        bootstrap_mean_auroc(pairs, 5, sets=[("A", "B")])


def test_ablate_rows_name_each_pairs_sets_for_the_bootstrap(tmp_path):
    """`zsad ablate` passes each pair's (ID, OOD) names: a row's mean interval and its Δ against the reference are
    the shared-set ones, and a set that holds other images in another pair is an error."""
    from omegaconf import OmegaConf

    from zsad.evaluation.ablate import ablation_row, add_deltas
    from zsad.evaluation.metrics import bootstrap_mean_auroc, paired_bootstrap_delta

    rng = np.random.default_rng(2)
    names, sizes = [("A", "B"), ("A", "C"), ("B", "A"), ("B", "C")], {"A": 20, "B": 16, "C": 12}
    cfg = OmegaConf.create({"bootstrap": 60, "seed": 3, "settings": None, "reference": "ref"})

    def result(label: str, pairs, indices=None) -> dict:
        out = tmp_path / label
        (out / "scores" / "s").mkdir(parents=True)
        for (x, y), (i, o) in zip(names, pairs):
            np.savez(out / "scores" / "s" / f"{x}_vs_{y}.npz", id_scores=i, ood_scores=o, id_indices=(indices or {}).get((x, y), np.arange(sizes[x])),
                     ood_indices=np.arange(sizes[y]))
        rows = [{"id": x, "ood": y, "shift": "near" if y != "C" else "far", "auroc": auroc(*p)} for (x, y), p in zip(names, pairs)]
        return {"output_dir": str(out), "rows": rows, "means": [], "evaluations_per_image": {"s": 4}}

    ref_pairs = _scored(rng, names, sizes)
    pairs = [(i + rng.normal(0, 0.5, len(i)), o + rng.normal(0, 0.5, len(o))) for i, o in ref_pairs]
    rows = [ablation_row(cfg, "cheap", "s", {}, result("cheap", pairs)), ablation_row(cfg, "ref", "s", {}, result("ref", ref_pairs))]
    near = [n for n in names if n[1] != "C"]
    assert rows[0]["_sets"]["near"] == near and rows[0]["resampling"] == "per_set"
    assert rows[0]["mean_all_ci"] == bootstrap_mean_auroc(pairs, 60, seed=3, sets=names) != bootstrap_mean_auroc(pairs, 60, seed=3)
    add_deltas(cfg, rows)
    near_pairs, near_ref = [p for n, p in zip(names, pairs) if n in near], [p for n, p in zip(names, ref_pairs) if n in near]
    assert rows[0]["delta_group"] == "near" and rows[0]["delta"] == paired_bootstrap_delta(near_pairs, near_ref, 60, seed=3, sets=near)
    with pytest.raises(ValueError, match="set A holds other images"):
        ablation_row(cfg, "moved", "s", {}, result("moved", pairs, {("A", "C"): np.arange(sizes["A"])[::-1]}))
