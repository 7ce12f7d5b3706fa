"""Issue 25: UFCOD (arXiv 2605.03410) at parity with its code, and zsad's default where its code saturates.

The reference values in tests/fixtures/ufcod/ come from UFCOD's own `EnergyOODDetector` at the pinned commit
(tests/fixtures/ufcod/README.md says how), so this runs offline in any clone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from omegaconf import OmegaConf

import zsad
from zsad.config.schema import EvalConfig
from zsad.errors import ConfigError
from zsad.scoring.detector import DETECTORS, SoftMinKNNDetector, describe_detector, load_detector, make_detector
from zsad.scoring.ufcod_detector import SELECTIONS, soft_min

FIXTURES = Path(__file__).parent / "fixtures" / "ufcod"
META = json.loads((FIXTURES / "cases.json").read_text())
CASES = sorted(META["cases"])
PARITY_ATOL = 1e-9


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURES / "reference.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _case(reference: dict, name: str) -> tuple[dict, dict]:
    return META["cases"][name], {k.split("__", 1)[1]: v for k, v in reference.items() if k.startswith(name + "__")}


def _parity(settings: dict, **overrides) -> SoftMinKNNDetector:
    """zsad's detector with a reference case's settings; UFCOD treats an unknown selection name as random."""
    selection = settings["method"] if settings["method"] in SELECTIONS else "random"
    options = {"k": settings["k"], "temperature": settings["T"], "n_references": settings["n_samples"], "selection": selection,
               "random_state": settings["random_state"], "mode": "parity", **overrides}
    return SoftMinKNNDetector(**options)


@pytest.mark.parametrize("name", CASES)
def test_parity_with_ufcods_detector(reference, name):
    """Same references in the same order, raw and calibrated scores within 1e-9 (UFCOD's sign: higher = ID)."""
    settings, ref = _case(reference, name)
    det = _parity(settings).fit(ref["features"])
    np.testing.assert_array_equal(det.selected_, ref["selected"])
    np.testing.assert_allclose(det.references_, ref["reference_features"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(-det.soft_min_distance(ref["queries"]), ref["raw"], rtol=0, atol=PARITY_ATOL)
    np.testing.assert_allclose(-det.score(ref["queries"]), ref["calibrated"], rtol=0, atol=PARITY_ATOL)
    np.testing.assert_allclose(-det.soft_min_distance(ref["features"][ref["selected"]]), ref["references_raw"], rtol=0, atol=PARITY_ATOL)
    np.testing.assert_allclose([-det.calibration_mean_, det.calibration_std_], ref["calibration"], rtol=0, atol=PARITY_ATOL)
    np.testing.assert_array_equal(1 - det.predict(ref["queries"]), ref["predict"])  # UFCOD's predict: 1 = in-distribution
    uncalibrated = _parity(settings, calibrate=False).fit(ref["features"])
    np.testing.assert_allclose(-uncalibrated.score(ref["queries"]), ref["raw"], rtol=0, atol=PARITY_ATOL)


def test_the_cases_cover_what_decides_parity(reference):
    """Ties, every row a reference, the saturation, an unknown method, a short stratified draw: in the fixtures."""
    ties = _case(reference, "ties_grid")[1]
    assert len(np.unique(ties["features"], axis=0)) < len(ties["features"])
    every = _case(reference, "all_rows_when_n_le_n_samples")
    assert len(every[1]["features"]) <= every[0]["n_samples"] and np.array_equal(every[1]["selected"], np.arange(len(every[1]["features"])))
    assert META["cases"]["unknown_method_is_random"]["method"] not in SELECTIONS
    np.testing.assert_array_equal(_case(reference, "unknown_method_is_random")[1]["selected"], _case(reference, "random")[1]["selected"])
    short = _case(reference, "stratified_tied_norms")
    assert len(short[1]["selected"]) < short[0]["n_samples"] < len(short[1]["features"])
    raw = _case(reference, "facility_location")[1]["raw"]
    assert np.sum(raw == raw.min()) >= 3, "the far queries tie exactly in UFCOD's scores"


def test_zsad_default_differs_from_parity_where_the_floor_saturates(reference):
    """UFCOD's +1e-10 caps the soft-min distance at −T·ln 1e-10: far rows tie. zsad's log-sum-exp keeps ranking them."""
    settings, ref = _case(reference, "facility_location")
    parity, ours = _parity(settings).fit(ref["features"]), _parity(settings, mode="zsad").fit(ref["features"])
    np.testing.assert_array_equal(ours.selected_, parity.selected_)
    p, z = parity.soft_min_distance(ref["queries"]), ours.soft_min_distance(ref["queries"])
    distance = np.linalg.norm(parity.scaler_.transform(ref["queries"])[:, None] - parity.references_[None], axis=-1).min(axis=1)
    near, far = distance < 5, distance > 30
    assert near.sum() >= 3 and far.sum() >= 3
    np.testing.assert_allclose(z[near], p[near], rtol=0, atol=1e-8)  # the floor is invisible close by
    assert np.all(p[far] == -0.5 * np.log(1e-10)), "parity: saturated, tied"
    assert len(np.unique(z[far])) == far.sum() and np.all(z[far] > p[far] + 1), "zsad: every far row ranked, no cap"
    order = np.argsort(distance)
    assert np.all(np.diff(z[order]) > 0), "zsad's score grows with the distance to the references here"


def test_zsad_calibration_is_leave_one_out(reference):
    """zsad mode: each reference scored against the others; parity: against all, itself at distance 0."""
    settings, ref = _case(reference, "energy_scale")
    det = _parity(settings, mode="zsad").fit(ref["features"])
    r, k, T = det.references_, det.k, det.temperature
    own = []
    for i in range(len(r)):
        d = np.sort(np.linalg.norm(np.delete(r, i, axis=0) - r[i], axis=1))[:k]
        own.append(d.min() - T * np.log(np.sum(np.exp(-(d - d.min()) / T))))
    assert det.calibration_mean_ == pytest.approx(np.mean(own), abs=1e-12)
    assert det.calibration_std_ == pytest.approx(np.std(own) + 1e-8, abs=1e-12)
    parity = _parity(settings).fit(ref["features"])
    assert det.calibration_mean_ > parity.calibration_mean_ + 0.1, "without the self-match the references sit farther from the rest"


def test_soft_min_forms_agree_where_the_floor_is_negligible():
    d = np.array([[0.0, 0.3, 1.0], [2.0, 2.0, 2.0], [50.0, 60.0, 70.0]])
    lse, floored = soft_min(d, 0.5), soft_min(d, 0.5, 1e-10)
    np.testing.assert_allclose(lse[:2], floored[:2], atol=1e-9)
    assert lse[1] == pytest.approx(2.0 - 0.5 * np.log(3), abs=1e-15)
    assert lse[2] == pytest.approx(50.0 - 0.5 * np.log1p(np.exp(-20.0) + np.exp(-40.0)), abs=1e-12)
    assert floored[2] == pytest.approx(-0.5 * np.log(1e-10), abs=1e-12)


def test_k_above_the_references_is_capped_with_a_warning():
    """UFCOD's fit raises there (sklearn's kneighbors); zsad uses every reference and says so."""
    assert META["k_above_references_error"].startswith("ValueError")
    x = np.arange(10.0).reshape(5, 2)
    with pytest.warns(UserWarning, match="only 5 available"):
        parity = SoftMinKNNDetector(k=10, mode="parity").fit(x)
    with pytest.warns(UserWarning, match="only 4 available"):
        SoftMinKNNDetector(k=10).fit(x)
    d = np.linalg.norm(parity.references_[:, None] - parity.references_[None], axis=-1)
    np.testing.assert_allclose(parity.soft_min_distance(x), -0.5 * np.log(np.exp(-d / 0.5).sum(axis=1) + 1e-10), atol=1e-12)


def test_options_are_checked_and_the_seed_matters():
    with pytest.raises(ConfigError, match="facility_location, random, stratified"):
        SoftMinKNNDetector(selection="kmeans++")
    with pytest.raises(ConfigError, match="mode"):
        SoftMinKNNDetector(mode="exact")
    with pytest.raises(ConfigError, match="temperature"):
        SoftMinKNNDetector(temperature=0)
    x = np.random.default_rng(0).normal(size=(60, 2))
    a, b = SoftMinKNNDetector(n_references=12).fit(x), SoftMinKNNDetector(n_references=12, random_state=123).fit(x)
    assert not np.array_equal(a.selected_, b.selected_)
    state = np.random.get_state()[1].copy()
    SoftMinKNNDetector(n_references=12, selection="random").fit(x)
    assert np.array_equal(np.random.get_state()[1], state), "numpy's global generator is left alone (UFCOD reseeds it)"


def test_saves_and_loads_as_arrays_and_json(tmp_path, reference):
    settings, ref = _case(reference, "stratified")
    det = _parity(settings, mode="zsad", calibrate=True).fit(ref["features"])
    det.save(tmp_path / "det")
    meta = json.loads((tmp_path / "det.json").read_text())
    assert meta["kind"] == "softmin_knn" and meta["settings"]["selection"] == "stratified"
    with np.load(tmp_path / "det.npz", allow_pickle=False) as data:
        assert {"references", "selected", "calibration", "scaler_mean", "scaler_scale"} <= set(data.files)
    loaded = load_detector(tmp_path / "det")
    assert isinstance(loaded, SoftMinKNNDetector)
    np.testing.assert_array_equal(loaded.score(ref["queries"]), det.score(ref["queries"]))
    np.testing.assert_array_equal(loaded.selected_, det.selected_)
    assert "soft-min kNN (k 10, T 0.5)" in describe_detector(loaded)


def test_the_evaluate_config_builds_it_with_defaults_or_its_section():
    cfg = OmegaConf.structured(EvalConfig)
    assert make_detector("softmin_knn", cfg.detector) == SoftMinKNNDetector()
    assert make_detector("softmin_knn", {"softmin_knn": {"k": 3, "mode": "parity"}}) == SoftMinKNNDetector(k=3, mode="parity")
    with pytest.raises(ConfigError, match="Known kinds"):
        make_detector("knn", cfg.detector)


def test_the_scorer_is_diffpath_6d_path_and_dynamics_energy():
    """Σε² and Σdε² of DiffPath-6D's inversion, bit for bit, for the soft-min kNN detector."""
    from helpers import random_backbone

    backbone = random_backbone()
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(7)) * 2 - 1
    ours = zsad.build_scorer("ufcod", steps=4, network_batch=4)
    six = zsad.build_scorer("diffpath_6d", steps=4, network_batch=4)(backbone, images, seed=0)
    two = ours(backbone, images, seed=0)
    assert ours.feature_names == ["path_energy", "dynamics_energy"] and ours.detector in DETECTORS
    assert torch.equal(two, six[:, [1, 4]])
    assert six.shape[1] == 6 and zsad.build_scorer("diffpath_6d").feature_names[1:5:3] == ["eps_sum_sq", "deps_dt_sq"]
    assert torch.equal(ours.derive([six]), two) and np.array_equal(ours.derive([six.numpy()]), two.numpy())
    assert [s.options() for s in ours.sources()] == [zsad.build_scorer("diffpath_6d", steps=4).options()]
    assert ours.network_evaluations_per_image(1000) == 4


def test_runs_through_zsad_evaluate(smoke_checkpoint, tmp_path):
    """A `scorers:` row runs end to end: the detector of kind softmin_knn is fitted, saved, and scores the pairs."""
    out = tmp_path / "eval"
    run_cli("evaluate", "-c", "conf/eval/smoke.yaml", f"backbone.path={smoke_checkpoint}", f"output_dir={out}",
            "scorers=[{name: diffpath_6d, options: {steps: 5}}, {name: ufcod, options: {steps: 5}}]", "bootstrap=0", "plots=false", "logger=none")
    results = json.loads((out / "results.json").read_text())
    rows = [r for r in results["rows"] if r["scorer"] == "ufcod"]
    assert len(rows) == 4 and all(0 <= r["auroc"] <= 1 for r in rows)
    assert results["extractions"]["derived"] >= 5, "ufcod's features come from diffpath_6d's, no second inversion"
    det = load_detector(out / "detectors" / "ufcod" / "gradients")
    assert isinstance(det, SoftMinKNNDetector) and det.mode == "zsad" and len(det.references_) == 48


def test_published_column_holds_like_with_like_only():
    """UFCOD's README numbers appear only beside a backbone trained on CelebA (DiffPath's CelebA-32 family)."""
    from types import SimpleNamespace

    from zsad.evaluation.evaluate import published_auroc
    from zsad.scoring.scorers import build_scorer

    ufcod = build_scorer("ufcod")
    assert published_auroc(ufcod, SimpleNamespace(trained_on="celeba"), "cifar10", "svhn") == 0.951
    assert published_auroc(ufcod, SimpleNamespace(trained_on="celeba"), "cifar10", "cifar100") is None  # not in its README
    assert published_auroc(ufcod, SimpleNamespace(trained_on="shapes"), "cifar10", "svhn") is None
    assert published_auroc(build_scorer("scoped"), SimpleNamespace(trained_on="celeba"), "cifar10", "svhn") is None


def test_references_per_tile_position_are_ufcods_choice_at_each_position(tmp_path):
    """On tiles, references are picked at every tile position (rows are image-major: row i is position i % T), each
    position's exactly as UFCOD's selection picks them from that position's rows alone."""
    from zsad.scoring.ufcod_detector import select_references, select_references_by_group

    rng = np.random.default_rng(3)
    T, images = 4, 150
    x = rng.normal(size=(images * T, 5)) + np.tile(np.arange(T), images)[:, None] * 3.0  # positions differ in level
    positions = np.tile(np.arange(T), images)
    chosen = select_references_by_group(x, positions, 20, "facility_location", 42)
    expected = np.concatenate([np.flatnonzero(positions == p)[select_references(x[positions == p], 20, "facility_location", 42)]
                               for p in range(T)])
    np.testing.assert_array_equal(chosen, expected)
    assert len(chosen) == 80 and len(set(chosen.tolist())) == 80
    assert np.bincount(positions[chosen]).tolist() == [20] * T  # all together would not balance the positions
    with pytest.raises(ValueError, match="one label per row"):
        select_references_by_group(x, positions[:-1], 20, "facility_location", 42)
    det = SoftMinKNNDetector().fit(x, groups=positions)
    np.testing.assert_array_equal(det.selected_, select_references_by_group(x, positions, 100, "facility_location", 42))
    assert (len(det.references_), det.groups_) == (400, T)
    assert "100 at most per tile position, 4 positions" in describe_detector(det)
    # the fit rows score as new rows would: a reference leaves itself out (its calibration statistics), the others do not
    fitted, plain = det.score_fitted(x), det.score(x)
    refs = np.zeros(len(x), dtype=bool)
    refs[det.selected_] = True
    np.testing.assert_allclose(fitted[det.selected_].mean(), 0.0, atol=1e-12)  # z-calibrated by the same leave-one-out scores
    np.testing.assert_array_equal(fitted[~refs], plain[~refs])
    assert (fitted[refs] > plain[refs]).all()  # without itself at distance 0, every reference is farther
    det.save(tmp_path / "d")
    again = load_detector(tmp_path / "d")
    assert again.groups_ == T
    np.testing.assert_allclose(again.score_fitted(x), fitted, rtol=0, atol=1e-12)  # recomputed, not kept from fit
    # leave-image-out (tiles of one image share pixels): each row against the references of the other images only
    images = np.repeat(np.arange(len(x) // T), T)
    z, ref_images = det.scaler_.transform(x), images[det.selected_]
    brute = np.array([soft_min(np.sort(np.linalg.norm(det.references_[ref_images != images[i]] - z[i], axis=1))[None, :10], 0.5)[0]
                      for i in range(len(x))])
    np.testing.assert_allclose(det._leave_image_out(x, images), brute, rtol=1e-12)
    assert (det.score_fitted(x, images) >= fitted - 1e-12).all()
    with pytest.raises(ConfigError, match="at least 2 images"):
        SoftMinKNNDetector().fit(x[:T], groups=positions[:T]).score_fitted(x[:T], np.zeros(T))
    for other in (x[:-1], np.vstack([x, x[:1]])):  # only the rows fit was given
        with pytest.raises(ValueError, match="rows fit was given"):
            det.score_fitted(other)
    np.testing.assert_array_equal(again.score(x[:50]), det.score(x[:50]))


def test_zsad_fit_takes_the_soft_min_knn_on_tiles(trained_checkpoint, tmp_path):
    """`detector_kind="softmin_knn"` (`zsad fit --detector-kind softmin_knn`) fits UFCOD's detector on diffpath_fused's
    tile rows, its references picked per tile position; every fit tile is one while there are at most 100 fit images;
    the folder scores the same after loading; a tile-position GMM option or an unknown kind is refused before any work."""
    from PIL import Image

    from zsad import AnomalyDetector
    from zsad.data import make_builtin
    from zsad.detection.card import card_text
    from zsad.detection.settings import DetectorSettings

    (tmp_path / "normal").mkdir()
    for i, a in enumerate(make_builtin("clouds", "train", 24)):
        Image.fromarray(np.asarray(Image.fromarray(a).resize((32, 32)))).save(tmp_path / "normal" / f"n{i:03d}.png")
    det = AnomalyDetector.fit(tmp_path / "normal", backbone=str(trained_checkpoint), detector_kind="softmin_knn", scorer_options={"steps": 2},
                              false_alarm_rate=0.2, device="cpu", cache_dir=tmp_path / "cache", batch_size=24, network_batch=64)
    T = det.tiling.count
    assert T == 9 and isinstance(det.detector, SoftMinKNNDetector) and det.detector.groups_ == T
    n_fit = det.info["n_fit"]
    assert len(det.detector.references_) == n_fit * T  # n_fit ≤ 100: every fit tile is a reference
    # rows are image-major: position 0's references are rows 0, T, 2T, … (a wrong position label would reorder them)
    np.testing.assert_array_equal(det.detector.selected_[:n_fit], np.arange(n_fit) * T)
    # the tile map is standardised by the fit tiles scored without their own image's references: farther than leave-one-out,
    # whose z-calibrated mean is exactly 0 here (and the self-match's is below it)
    assert det.maps.tile_mean > 0.05
    assert "per tile position" in card_text(det) and "Gaussian mixture" not in card_text(det)
    noise = torch.from_numpy(make_builtin("noise", "test", 4)).permute(0, 3, 1, 2).float() / 255
    normal = torch.from_numpy(make_builtin("clouds", "test", 4)).permute(0, 3, 1, 2).float() / 255
    s_noise, s_normal = det.score(noise).scores, det.score(normal).scores
    assert s_noise.min() > s_normal.max()
    det.save(tmp_path / "det")
    np.testing.assert_array_equal(AnomalyDetector.load(tmp_path / "det", device="cpu").score(noise).scores, s_noise)
    with pytest.raises(ConfigError, match="--detector-kind gmm"):
        AnomalyDetector.fit(tmp_path / "normal", backbone=str(trained_checkpoint), detector_kind="softmin_knn", tile_position=True)
    with pytest.raises(ConfigError, match="gmm, softmin_knn"):
        DetectorSettings(detector_kind="knn")

