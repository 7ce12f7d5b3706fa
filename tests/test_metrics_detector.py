"""Issue 3: metrics agree with sklearn and direct counts; detectors separate clusters and round-trip."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from zsad.ood.detector import GMMDetector, KDEDetector, load_detector
from zsad.ood.metrics import auroc, bootstrap_auroc_ci, fpr_at_tpr, ood_metrics


def direct_fpr95(id_scores, ood_scores):
    """Threshold = the score of the ceil(0.95·n)-th highest OOD image; flagged = score >= threshold."""
    k = int(np.ceil(0.95 * len(ood_scores)))
    threshold = np.sort(ood_scores)[::-1][k - 1]
    return float(np.mean(id_scores >= threshold))


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn_and_direct_counts(seed, tied):
    rng = np.random.default_rng(seed)
    id_s, ood_s = rng.normal(0, 1, 300 + seed), rng.normal(0.8, 1.3, 200)
    if tied:
        id_s, ood_s = np.round(id_s), np.round(ood_s)  # heavy ties
    y = np.r_[np.zeros(len(id_s)), np.ones(len(ood_s))]
    s = np.r_[id_s, ood_s]
    m = ood_metrics(id_s, ood_s)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert m["aupr_out"] == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert m["aupr_in"] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-6)
    assert m["fpr95"] == pytest.approx(direct_fpr95(id_s, ood_s), abs=1e-6)
    assert auroc(-id_s, -ood_s) == pytest.approx(1 - m["auroc"], abs=1e-6)


def test_perfect_and_chance_separation():
    assert ood_metrics([0, 1, 2], [3, 4])["auroc"] == 1.0
    assert ood_metrics([0, 1, 2], [3, 4])["fpr95"] == 0.0
    assert fpr_at_tpr([5, 6, 7], [0, 1]) == 1.0
    assert ood_metrics([1, 1, 1], [1, 1])["auroc"] == pytest.approx(0.5)


def test_bootstrap_interval_contains_the_estimate_and_shrinks_with_data():
    rng = np.random.default_rng(0)
    small = bootstrap_auroc_ci(rng.normal(0, 1, 50), rng.normal(1, 1, 50), n_boot=300)
    big_id, big_ood = rng.normal(0, 1, 2000), rng.normal(1, 1, 2000)
    big = bootstrap_auroc_ci(big_id, big_ood, n_boot=300)
    assert big[0] <= auroc(big_id, big_ood) <= big[1]
    assert big[1] - big[0] < small[1] - small[0]
    assert bootstrap_auroc_ci(big_id, big_ood, n_boot=300, seed=3) == bootstrap_auroc_ci(big_id, big_ood, n_boot=300, seed=3)


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
    with pytest.raises(ValueError, match="at least 20 ID-train samples"):
        GMMDetector(mode="grid").fit(rng.normal(size=(12, 3)))


def test_kde_detector_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    det = KDEDetector(bandwidth=0.5).fit(rng.normal(0, 1, 200))
    assert auroc(det.score(rng.normal(0, 1, 100)), det.score(rng.normal(6, 1, 100))) > 0.99
    det.save(tmp_path / "kde")
    assert np.array_equal(load_detector(tmp_path / "kde").score([0.1, 3.0]), det.score([0.1, 3.0]))
