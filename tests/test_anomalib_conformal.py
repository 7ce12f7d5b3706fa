"""zsad's conformal threshold on anomalib models (zsad/integrations/anomalib, docs/anomalib.md).

The arithmetic is tested on plain arrays against zsad.detection.conformal (no anomalib, no Lightning); the guarantee is
tested as `zsad fit`'s is, with anomalib's own Engine, Folder datamodule and `Padim(pre_trained=False)` (random backbone
weights, offline) on a 32 px MVTec-layout folder of coins (zsad/data/defects.py): validation = half of the test folder
(val_split_mode "from_test", label-aware), so the held-out normal test images and the calibration images are exchangeable
by construction.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import betabinom

from zsad.detection import conformal, maps
from zsad.detection.calibration import Calibration
from zsad.errors import ConfigError
from zsad.integrations.anomalib.outputs import card_text, image_scale, map_scale, normalise
from zsad.integrations.anomalib.version import INSTALL, REQUIREMENT, AnomalibVersionError, check_version

REPO = Path(__file__).resolve().parents[1]
ALPHA = 0.2
FAMILIES = ("scratch", "hole", "stain", "patch")


# -- the arithmetic, on plain arrays --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2, 0.5])
def test_p_values_decisions_and_thresholds_are_zsads(alpha):
    """The same formula as zsad.detection.conformal on the same arrays, ties included; flagged ⇔ above the threshold ⇔
    normalised score above ½, and the normalisation keeps the order of every score."""
    rng = np.random.default_rng(0)
    cal = np.round(rng.normal(size=60), 1)  # rounded: many ties with the new scores
    new = np.concatenate([np.round(rng.normal(size=500), 1), [cal.max(), cal.min(), cal.max() + 40]])
    maxima, medians = cal + np.abs(rng.normal(size=60)), cal - 1
    c = Calibration(alpha, cal, maxima, float(np.median(medians)))
    assert np.array_equal(c.p_values(new), conformal.p_values(cal, new))
    flagged = c.decide(new, alpha)
    assert np.array_equal(flagged, conformal.is_anomaly(cal, new, alpha))
    assert np.array_equal(flagged, c.p_values(new) <= alpha + 1e-12)
    assert c.image_threshold(alpha) == conformal.threshold(cal, alpha) and np.array_equal(flagged, new > c.image_threshold(alpha))
    assert c.map_threshold(alpha) == maps.map_threshold(maxima, alpha)
    normal = normalise(new, image_scale(c))
    assert ((normal > 0) & (normal < 1)).all() and np.array_equal(normal > 0.5, flagged)
    order = np.argsort(new, kind="stable")
    assert (np.diff(normal[order]) >= 0).all() and len(np.unique(normal)) == len(np.unique(new)), "order kept, no new ties"
    assert normalise(np.array([c.image_threshold()]), image_scale(c))[0] == 0.5
    assert normalise(np.array([c.map_threshold()]), map_scale(c))[0] == 0.5 and c.map_top == maxima.max()
    assert normalise(np.array([np.median(medians)]), map_scale(c))[0] == 0.25, "the typical map value (median of the medians) at ¼"
    far = normalise(cal.max() + np.array([1e3, 1e3 + 1]), image_scale(c)).astype(np.float32)  # as anomalib carries them
    assert far[0] < far[1] < 1, "far anomalies stay apart in float32 (a logistic, or anomalib's clamp, ties them at 1.0)"


def test_an_unreachable_rate_is_refused_naming_the_size_it_needs():
    c = Calibration(0.05, np.arange(10.0))
    with pytest.raises(ConfigError, match=r"0\.05 needs at least 19 normal calibration images.*has 10.*α ≥ 0\.091 "):
        c.decide(np.zeros(3))
    with pytest.raises(ConfigError, match=r"has 10.*Use --false-alarm-rate 0\.091 or more"):
        c.decide(np.zeros(3), remedy="Use --false-alarm-rate {smallest:g} or more.")
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        c.decide(np.zeros(3), 1.5)
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        Calibration(0.0, np.arange(10.0))
    with pytest.raises(ConfigError, match="holds no scores, so nothing can be decided"):
        Calibration(0.2, np.zeros(0)).decide(np.zeros(1))
    assert c.image_threshold() == np.inf and not c.reaches() and c.reaches(0.1)
    assert c.reaches(0.091) and not c.reaches(1 / 11 - 1e-4), "the α the message names is reachable; the one just below is not"
    assert c.decide(np.array([9.5, 8.5]), 0.1).tolist() == [True, False], "k = 1: only above the largest calibration score"


def test_the_card_states_the_beta_spread():
    c = Calibration(0.2, np.linspace(0, 1, 150))
    text = card_text(c, "Folder, val_split_mode from_test", excluded=4, model="Padim")
    spread = conformal.rate_spread(0.2, 150)
    assert "Beta(30, 121)" in text and f"{spread.q05:.2%}" in text and f"{spread.q95:.2%}" in text and "4 images labelled anomalous" in text
    assert "**no rate**" in card_text(Calibration(0.05, np.arange(10.0)))


def test_the_version_check_names_the_tested_range_and_the_install_command():
    assert check_version("2.7.0") == "2.7.0" and check_version("2.7.3") == "2.7.3"
    for version in ("2.6.1", "2.8.0", "3.0.0"):
        with pytest.raises(AnomalibVersionError, match=rf"needs anomalib>=2\.7,<2\.8 \(tested with 2\.7\.0\); anomalib {version} is installed.*"
                                                      r'pip install "zsad\[anomalib\]"'):
            check_version(version)
    with pytest.raises(AnomalibVersionError, match=r'not installed\. Install it with: pip install "zsad\[anomalib\]"'):
        check_version(None)
    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["anomalib"] == [REQUIREMENT] and REQUIREMENT in extras["dev"], "the extra pins the range the check names"
    assert INSTALL == 'pip install "zsad[anomalib]"'


# -- the post-processor's hooks, fed by hand (anomalib, no Trainer) -----------------------------------------------------------
def _batch(scores, labels=None, maps_=None):
    import torch
    from anomalib.data import ImageBatch

    scores = torch.as_tensor(scores, dtype=torch.float32)
    return ImageBatch(image=torch.zeros(len(scores), 3, 4, 4), pred_score=scores, anomaly_map=maps_,
                      gt_label=None if labels is None else torch.as_tensor(labels, dtype=torch.bool))


def _calibrate(pp, *batches):
    pp.on_validation_epoch_start(None, None)
    for b in batches:
        pp.on_validation_batch_end(None, None, b)
    pp.on_validation_epoch_end(None, None)


def test_images_labelled_anomalous_never_enter_calibration():
    pytest.importorskip("anomalib")
    import torch
    from anomalib.data import InferenceBatch

    from zsad.integrations.anomalib import ConformalPostProcessor

    pp = ConformalPostProcessor(false_alarm_rate=0.25)
    maps_ = torch.arange(8 * 16, dtype=torch.float32).reshape(8, 1, 4, 4)
    _calibrate(pp, _batch([1, 100, 2, 3], [0, 1, 0, 0], maps_[:4]), _batch([200, 4, 5, 300], [1, 0, 0, 1], maps_[4:]))
    assert pp.calibration_scores.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0] and pp.excluded_anomalous == 3
    assert pp.calibration_map_maxima.tolist() == [15.0, 47.0, 63.0, 95.0, 111.0], "maxima of the normal images' maps only"
    out = pp(InferenceBatch(pred_score=torch.tensor([4.5, 5.5, 100.0]), anomaly_map=maps_[:3]))
    assert out.pred_label.tolist() == [False, True, True], "k = ⌊0.25·6⌋ = 1: flagged above 5, the largest normal score, never 100 or 300"
    assert ((out.pred_score > 0.5) == out.pred_label).all() and out.pred_mask.dtype == torch.bool
    with pytest.raises(ConfigError, match="no labels"):
        _calibrate(ConformalPostProcessor(), _batch([1.0, 2.0]))
    with pytest.raises(ConfigError, match="no image labelled normal"):
        _calibrate(ConformalPostProcessor(), _batch([1.0, 2.0], [1, 1]))
    with pytest.raises(ConfigError, match="1 calibration scores are not finite"):
        _calibrate(ConformalPostProcessor(), _batch([1.0, float("nan"), 2.0], [0, 0, 0]))
    with pytest.raises(ConfigError, match="no calibration scores: validate the model"):
        ConformalPostProcessor()(InferenceBatch(pred_score=torch.tensor([1.0])))
    with pytest.raises(ConfigError, match="no calibration scores"):
        ConformalPostProcessor().image_threshold  # noqa: B018 (anomalib's attribute, read by its exporters)
    assert pp.image_threshold.item() == 5.0 and pp.pixel_threshold.item() == 111.0, "k = 1: the largest normal score and map maximum"
    # a checkpoint from before 2026-12-07 also holds the largest map value, now derived: it still loads
    state = {**pp.state_dict(), "calibration_map_top": torch.tensor(111.0, dtype=torch.float64)}
    again = ConformalPostProcessor(false_alarm_rate=0.25)
    again.load_state_dict(state)
    assert again.calibration_scores.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0] and again.image_threshold.item() == 5.0


def test_too_few_calibration_images_warn_and_decisions_are_refused():
    pytest.importorskip("anomalib")
    import torch
    from anomalib.data import InferenceBatch

    from zsad.integrations.anomalib import ConformalPostProcessor

    pp = ConformalPostProcessor(false_alarm_rate=0.05)
    with pytest.warns(UserWarning, match="too few for α = 0.05 \\(it needs at least 19\\)"):
        _calibrate(pp, _batch(np.arange(10.0), np.zeros(10)))
    with pytest.raises(ConfigError, match="needs at least 19 normal calibration images"):
        pp(InferenceBatch(pred_score=torch.tensor([1.0])))
    pp.false_alarm_rate = 0.1  # k = 1 with 10 images
    assert pp(InferenceBatch(pred_score=torch.tensor([9.5, 8.5]))).pred_label.tolist() == [True, False]


def test_a_checkpoint_without_conformal_state_is_a_clear_error():
    pytest.importorskip("anomalib")
    from anomalib.post_processing import PostProcessor

    from zsad.integrations.anomalib import ConformalPostProcessor

    with pytest.raises(ConfigError, match="holds no conformal calibration.*Engine\\(\\)\\.validate"):
        ConformalPostProcessor().load_state_dict(PostProcessor().state_dict())


# -- the guarantee, through anomalib's Engine ---------------------------------------------------------------------------------
def _datamodule(root: Path, val_split_mode: str = "from_test"):
    from anomalib.data import Folder

    return Folder(name="coins", root=root / "coins", normal_dir="train/good", abnormal_dir=[f"test/{f}" for f in FAMILIES],
                  normal_test_dir="test/good", val_split_mode=val_split_mode, val_split_ratio=0.5, num_workers=0,
                  eval_batch_size=64, seed=0)


def _padim(post_processor):
    from anomalib.models import Padim

    # random backbone weights (nothing downloaded), anomalib's pre-processing at the images' own 32 px
    return Padim(pre_trained=False, pre_processor=Padim.configure_pre_processor(image_size=(32, 32)), post_processor=post_processor,
                 visualizer=False)


def _engine(root: Path):
    from anomalib.engine import Engine

    return Engine(default_root_dir=root / "runs", logger=False, accelerator="cpu", devices=1, enable_progress_bar=False)


def _outputs(batches) -> dict[str, np.ndarray]:
    cat = lambda name: np.concatenate([getattr(b, name).detach().cpu().numpy().reshape(len(b.gt_label), -1) for b in batches])
    return {"label": cat("gt_label")[:, 0], "flag": cat("pred_label")[:, 0], "p": cat("p_value")[:, 0], "score": cat("pred_score")[:, 0],
            "mask_any": cat("pred_mask").any(axis=1), "map": cat("anomaly_map"), "path": np.concatenate([b.image_path for b in batches])}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Padim fitted on 60 normal coins and calibrated at α = 0.2 on the normal half of the test folder's validation share
    (150 normal, 4 anomalous images); the other 150 normal and 4 anomalous test images, and the validation images, predicted
    with raw scores and maps (the normalised ones come from the checkpoint in a new process, below)."""
    pytest.importorskip("anomalib")
    from lightning.pytorch import seed_everything

    from zsad.data.defects import make_defect_benchmark
    from zsad.integrations.anomalib import ConformalPostProcessor

    root = tmp_path_factory.mktemp("anomalib")
    make_defect_benchmark(root, ["coins"], size=32, n_train=60, n_test_good=300, n_test_defect_per_family=2)
    seed_everything(0)
    pp = ConformalPostProcessor(false_alarm_rate=ALPHA)
    model, engine, dm = _padim(pp), _engine(root), _datamodule(root)
    engine.fit(model, datamodule=dm)
    pp.enable_normalization = False
    raw, val_raw = map(_outputs, engine.predict(model, dataloaders=[dm.test_dataloader(), dm.val_dataloader()]))
    pp.enable_normalization = True
    return {"root": root, "pp": pp, "model": model, "engine": engine, "dm": dm, "raw": raw, "val_raw": val_raw,
            "ckpt": Path(engine.trainer.checkpoint_callback.best_model_path)}


def test_held_out_normals_are_flagged_at_the_stated_rate(fitted):
    """m held-out normal images: the flag count lies inside the 99.9% interval of beta-binomial(m, k, n_cal − k + 1), a band
    that excludes a detector flagging at 2α."""
    pp, pred = fitted["pp"], fitted["raw"]
    n_cal = len(pp.calibration_scores)
    normal = pred["label"] == 0
    m, flagged = int(normal.sum()), int(pred["flag"][normal].sum())
    k = conformal.flag_rank(ALPHA, n_cal)
    lo, hi = betabinom(m, k, n_cal - k + 1).interval(0.999)
    assert n_cal == 150 and m == 150 and hi < 2 * ALPHA * m
    assert lo <= flagged <= hi, f"{flagged} of {m} held-out normals flagged; the law allows {lo:.0f}–{hi:.0f}"
    assert np.array_equal(pred["flag"], pred["p"] <= ALPHA) and np.array_equal(pred["flag"], pred["score"] > pp.calibration.image_threshold(ALPHA))
    # Padim's score is its map's maximum: the map threshold is the image threshold, so a pixel is masked exactly when flagged
    assert np.array_equal(pp.calibration_scores.numpy(), pp.calibration_map_maxima.numpy())
    assert np.array_equal(pred["mask_any"], pred["flag"])
    print(f"\nconformal α = {ALPHA}: {flagged} of {m} held-out normals flagged (band {lo:.0f}–{hi:.0f}); "
          f"{int(pred['flag'][~normal].sum())} of {int((~normal).sum())} defects")


def test_anomalous_validation_images_are_never_used(fitted):
    """Calibration = the raw scores of exactly the validation images labelled normal; the anomalous ones are counted, not used."""
    pp, dm, val = fitted["pp"], fitted["dm"], fitted["val_raw"]
    labels = dm.val_data.samples["label_index"].to_numpy()
    assert pp.excluded_anomalous == int((labels == 1).sum()) == 4 and len(pp.calibration_scores) == int((labels == 0).sum())
    assert np.array_equal(np.sort(pp.calibration_scores.numpy()), np.sort(val["score"][val["label"] == 0].astype(np.float64)))
    assert not set(val["path"]) & set(fitted["raw"]["path"]), "validation images were moved out of the test set"
    assert pp.calibration_source == "Folder, val_split_mode from_test" and "Beta(30, 121)" in pp.card("Padim")


def test_anomalibs_own_threshold_on_the_same_normal_only_validation(fitted, caplog):
    """anomalib's PostProcessor fed the same normal-only validation scores: its F1AdaptiveThreshold has no anomalies, falls back
    to the highest normal score (anomalib#2433, #3357), and flags held-out normals at a rate of about 1/(n+1) nobody chose."""
    import torch
    from anomalib.data import InferenceBatch
    from anomalib.post_processing import PostProcessor

    cal = fitted["pp"].calibration_scores.numpy()
    theirs = PostProcessor()
    with caplog.at_level("WARNING"):
        theirs.on_validation_batch_end(None, None, outputs=_batch(cal.astype(np.float32), np.zeros(len(cal))))
        theirs.on_validation_epoch_end(None, None)
    assert "does not contain any anomalous images" in caplog.text and "highest anomaly score" in caplog.text
    assert float(theirs.image_threshold) == pytest.approx(cal.max(), rel=1e-6)
    raw = fitted["raw"]
    normal = raw["label"] == 0
    theirs_flag = theirs(InferenceBatch(pred_score=torch.from_numpy(raw["score"][normal]))).pred_label.numpy().ravel()
    t_lo, t_hi = betabinom(int(normal.sum()), 1, len(cal)).interval(0.999)  # above the largest of n exchangeable scores: k = 1
    assert t_lo <= theirs_flag.sum() <= t_hi
    m, report = int(normal.sum()), []
    for alpha in (0.05, 0.1, ALPHA):  # the same calibration decides at any α (zsad score --false-alarm-rate does likewise)
        ours = fitted["pp"].calibration.decide(raw["score"][normal], alpha)
        k = conformal.flag_rank(alpha, len(cal))
        lo, hi = betabinom(m, k, len(cal) - k + 1).interval(0.999)
        assert lo <= ours.sum() <= hi, (alpha, ours.sum(), lo, hi)
        report.append(f"conformal α = {alpha}: {ours.sum()} ({ours.mean():.1%}, band {lo:.0f}–{hi:.0f})")
    print(f"\nheld-out normals flagged, n_cal = {len(cal)} normal validation images, m = {m}: {'; '.join(report)}; anomalib's "
          f"F1AdaptiveThreshold: {theirs_flag.sum()} ({theirs_flag.mean():.1%}, band {t_lo:.0f}–{t_hi:.0f}, 1/(n+1) = {1 / (len(cal) + 1):.1%})")


def test_mean_false_alarm_rates_over_validation_splits(fitted):
    """The 300 normal test images' distinct raw Padim scores split at random into n validation and the rest held out, 1,000
    times: anomalib's normal-only rule (the highest validation score, as checked above) flags 1/(n + 1) of new normals
    whatever rate was wanted; the conformal threshold flags k/(n + 1) ≤ α, the rate chosen (both exact for exchangeable
    scores, so the means land within 0.01)."""
    val, raw = fitted["val_raw"], fitted["raw"]
    # distinct scores, so that the rates are exact (the coin generator repeats a few of its 8 poses × 49 shifts among 300 crops)
    pool = np.unique(np.concatenate([val["score"][val["label"] == 0], raw["score"][raw["label"] == 0]]).astype(np.float64))
    assert len(pool) > 250
    rng, lines = np.random.default_rng(0), []
    for n in (20, 50, 150):
        theirs, ours = [], {alpha: [] for alpha in (0.05, 0.1, 0.2)}
        for _ in range(1000):
            perm = rng.permutation(len(pool))
            cal, new = Calibration(0.05, pool[perm[:n]]), pool[perm[n:]]
            theirs.append((new > cal.scores.max()).mean())
            for alpha in ours:
                ours[alpha].append(cal.decide(new, alpha).mean())
        assert abs(np.mean(theirs) - 1 / (n + 1)) < 0.01
        for alpha, rates in ours.items():
            assert abs(np.mean(rates) - conformal.flag_rank(alpha, n) / (n + 1)) < 0.01 and np.mean(rates) <= alpha + 0.01
        lines.append(f"n = {n}: anomalib {np.mean(theirs):.1%}; " + ", ".join(f"α = {a}: {np.mean(r):.1%}" for a, r in ours.items()))
    print("\nmean false-alarm rate on held-out normals over 1,000 splits: " + " | ".join(lines))


def test_the_conformal_state_round_trips_through_a_checkpoint_in_a_new_process(fitted, tmp_path):
    """Engine().predict(model, ckpt_path=...) in a fresh process, its post-processor built at the default α = 0.05: α = 0.2
    and the calibration come back from the checkpoint, every decision and p-value is the one made in this process, and the
    normalised scores and maps are outputs.normalise of the raw ones (threshold at ½, inside (0, 1))."""
    out = tmp_path / "out.npz"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        from pathlib import Path
        import numpy as np
        from test_anomalib_conformal import _datamodule, _engine, _outputs, _padim
        from zsad.integrations.anomalib import ConformalPostProcessor
        root = Path({str(fitted["root"])!r})
        pp = ConformalPostProcessor()
        res = _outputs(_engine(root).predict(_padim(pp), datamodule=_datamodule(root), ckpt_path={str(fitted["ckpt"])!r}))
        np.savez({str(out)!r}, alpha=pp.false_alarm_rate, n_cal=len(pp.calibration_scores), source=pp.calibration_source, **res)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    again, raw, cal = np.load(out), fitted["raw"], fitted["pp"].calibration
    assert again["alpha"] == ALPHA and again["n_cal"] == 150 and str(again["source"]) == "Folder, val_split_mode from_test"
    for key in ("path", "flag", "p", "mask_any"):
        assert np.array_equal(again[key], raw[key]), key
    assert np.array_equal(again["score"], normalise(raw["score"], image_scale(cal, ALPHA)).astype(np.float32))
    assert np.array_equal(again["map"], normalise(raw["map"], map_scale(cal, ALPHA)).astype(np.float32))
    assert np.array_equal(again["flag"], again["score"] > 0.5) and ((again["score"] > 0) & (again["score"] < 1)).all()
    assert np.array_equal(again["mask_any"], (again["map"] > 0.5).any(axis=1)) and ((again["map"] > 0) & (again["map"] < 1)).all()


def test_a_rate_the_calibration_cannot_reach_is_refused_at_predict(fitted):
    pp = fitted["pp"]
    pp.false_alarm_rate = 0.001
    try:
        with pytest.raises(ConfigError, match=r"0\.001 needs at least 999 normal calibration images.*has 150"):
            fitted["engine"].predict(fitted["model"], datamodule=fitted["dm"])
    finally:
        pp.false_alarm_rate = ALPHA


def test_a_validation_set_that_copies_the_test_set_is_refused(fitted):
    """val_split_mode "same_as_test" (MVTecAD's default) is refused before fitting, with what to use instead."""
    from zsad.integrations.anomalib import ConformalPostProcessor

    root = fitted["root"]
    with pytest.raises(ConfigError, match=r"val_split_mode='same_as_test'.*leaks test images, anomalies included.*'from_train'.*'from_test'"):
        _engine(root).fit(_padim(ConformalPostProcessor()), datamodule=_datamodule(root, "same_as_test"))
