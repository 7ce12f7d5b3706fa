"""Issue 25 §2: SCOPED's score norm and Hutchinson trace against closed forms, its JVP paths, its ID-only level
selection and its KDE detector."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import AnalyticBackbone, IsotropicGaussianBackbone, analytic_coefficients, random_backbone

import zsad
from zsad.diffusion.fast import set_fast_path
from zsad.errors import ConfigError
from zsad.scoring.detector import load_detector, make_detector
from zsad.scoring.scoped_detector import ScopedKDEDetector, choose_levels, statistic
from zsad.scoring.scorers.scoped import eps_and_quadratic_forms, probes_from


def _hutchinson(backbone, x, t: int, n_probes: int, kind: str, mode: str, seed: int = 0) -> tuple[np.ndarray, float]:
    """Per-probe estimates of tr ∂s/∂x (score s = −ε̂/σ) at one image and step, and σ."""
    g = torch.Generator().manual_seed(seed)
    probes = probes_from(torch.randn((1, n_probes, *x.shape[1:]), generator=g, dtype=torch.float64), kind)
    ts = torch.tensor([t])
    _, forms = eps_and_quadratic_forms(backbone.predict_eps, x, ts, probes, mode)
    sigma = math.sqrt(1 - float(backbone.alphas_cumprod[t]))
    return (-forms[0] / sigma).numpy(), sigma


@pytest.mark.parametrize("mode", ["reverse", "forward"])
@pytest.mark.parametrize("width", [5, 2])
def test_hutchinson_on_the_analytic_backbone_matches_trace_and_variance(mode, width):
    """ε̂ = a·x + b·c + g·roll(x): score Jacobian −(a·I + g·R)/σ, trace −a·d/σ; Rademacher variance d·g²/σ² when the
    roll has no 2-cycles (width ≥ 3, Jacobian not symmetric), 2d·g²/σ² at width 2 (a swap: symmetric)."""
    backbone, t, n = AnalyticBackbone(), 700, 20_000
    x = torch.randn((1, 3, 4, width), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    est, sigma = _hutchinson(backbone, x, t, n, "rademacher", mode)
    a, _, g = (float(c) for c in analytic_coefficients(torch.tensor([t])))
    d = x.numel()
    trace, var = -a * d / sigma, (d if width >= 3 else 2 * d) * g**2 / sigma**2
    assert abs(est.mean() - trace) <= 4 * math.sqrt(var / n), (est.mean(), trace)
    # The sample variance's relative standard error is sqrt((κ − 1)/n), κ the estimate's kurtosis (≈ 3 for a sum
    # of many ±1 products, measured here): 4 standard errors, 4.5% at 20,000 probes.
    kurtosis = float(((est - est.mean()) ** 4).mean() / est.var() ** 2)
    tolerance = 4 * math.sqrt((kurtosis - 1) / n)
    assert abs(est.var(ddof=1) / var - 1) <= tolerance, (est.var(ddof=1), var, tolerance)
    other = (2 * d if width >= 3 else d) * g**2 / sigma**2  # the formula of the other symmetry is rejected
    assert abs(est.var(ddof=1) / other - 1) > tolerance


def test_isotropic_gaussian_trace_is_exact():
    """Data N(0, s²I): score −x_t/v, trace −d/v with v = s²ᾱ + 1 − ᾱ; the full Jacobian's trace matches to float64
    precision, and Rademacher probes are exact (the Jacobian is a multiple of I)."""
    backbone = IsotropicGaussianBackbone(scale=0.5, image_size=3)
    x = torch.randn((1, 3, 3, 3), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for t in (10, 300, 900):
        ts = torch.tensor([t])
        sigma, v = math.sqrt(1 - float(backbone.alphas_cumprod[t])), float(backbone.variance(ts))
        jac = torch.autograd.functional.jacobian(lambda z, ts=ts, sigma=sigma: -backbone.predict_eps(z, ts) / sigma, x).reshape(x.numel(), x.numel())
        assert float(jac.trace()) == pytest.approx(-x.numel() / v, rel=1e-13)
        est, _ = _hutchinson(backbone, x, t, 8, "rademacher", "reverse")
        np.testing.assert_allclose(est, -x.numel() / v, rtol=1e-13)


def test_scorer_features_on_the_isotropic_gaussian():
    """Through the scorer: ‖s‖² = ‖x_t‖²/v² with x_t from the image's own seeded noise, trace −d/v at every level."""
    backbone = IsotropicGaussianBackbone(scale=0.7, image_size=4)
    images = torch.rand((3, 3, 4, 4), generator=torch.Generator().manual_seed(0)) * 2 - 1
    scorer = zsad.build_scorer("scoped", timesteps=[50, 400])
    feats = scorer(backbone, images, seed=0)
    d = images[0].numel()
    v = backbone.variance(torch.tensor([50, 400])).numpy()
    np.testing.assert_allclose(feats[:, 1::2].numpy(), np.broadcast_to(-d / v, (3, 2)), rtol=1e-5)
    norm2 = feats[:, 0::2].numpy()
    assert (norm2 > 0).all()
    # Stein's identity for the exact score: E‖s‖² = −E tr at every level, so the ratio statistic averages to ~1
    # over many images of the data distribution itself
    many = torch.randn((400, 3, 4, 4), generator=torch.Generator().manual_seed(5)) * 0.7
    ratio = statistic(scorer(backbone, many, seed=0).numpy(), "ratio")
    assert np.abs(ratio.mean(0) - 1).max() < 0.03, ratio.mean(0)


@pytest.mark.parametrize("sdpa", [True, False])
def test_forward_and_reverse_mode_agree_on_a_unet_with_attention(sdpa):
    backbone = set_fast_path(random_backbone(), sdpa=sdpa, channels_last=False)
    images = torch.rand((3, 3, 16, 16), generator=torch.Generator().manual_seed(4)) * 2 - 1
    rev = zsad.build_scorer("scoped", levels=2, jvp="reverse")(backbone, images, seed=0)
    fwd = zsad.build_scorer("scoped", levels=2, jvp="forward")(backbone, images, seed=0)
    torch.testing.assert_close(fwd, rev, rtol=1e-4, atol=1e-4 * float(rev.abs().max()))
    flags = [m.flash for m in backbone.modules() if type(m).__name__ == "Attend"]
    assert flags and all(f is sdpa for f in flags)  # forward mode ran attention plainly, then put the fast path back
    assert zsad.build_scorer("scoped", jvp="forward").options()["jvp"] == "forward"  # the path is in the recipe


def test_more_probes_are_averaged_and_each_image_keeps_its_probes():
    backbone = AnalyticBackbone(image_size=8)
    images = torch.rand((4, 3, 8, 8), generator=torch.Generator().manual_seed(6)) * 2 - 1
    one = zsad.build_scorer("scoped", levels=2, probes=1)(backbone, images, seed=0)
    many = zsad.build_scorer("scoped", levels=2, probes=64)(backbone, images, seed=0)
    torch.testing.assert_close(one[:, 0::2], many[:, 0::2])  # the norm does not depend on the probes
    a, _, _ = analytic_coefficients(zsad.build_scorer("scoped", levels=2).timesteps_for(1000))
    sigma = (1 - AnalyticBackbone().alphas_cumprod[zsad.build_scorer("scoped", levels=2).timesteps_for(1000)].double()).sqrt()
    exact = (-a * images[0].numel() / sigma).numpy()
    # 64 probes shrink the error 8×: closer to the exact trace than one probe on average over images and levels
    assert np.abs(many[:, 1::2].numpy() - exact).mean() < np.abs(one[:, 1::2].numpy() - exact).mean()
    alone = zsad.build_scorer("scoped", levels=2, probes=64)(backbone, images[2:3], seed=0)
    assert torch.equal(alone, many[2:3])


def test_options_are_checked():
    for bad in ({"probes": 0}, {"probe": "uniform"}, {"jvp": "both"}, {"timesteps": [5, 5]}, {"levels": 0}):
        with pytest.raises(ConfigError):
            zsad.build_scorer("scoped", **bad)
    with pytest.raises(ConfigError, match="exceed"):
        zsad.build_scorer("scoped", timesteps=[10, 2000]).timesteps_for(1000)
    for bad in ({"statistic": "sum"}, {"selection": "ood"}, {"bandwidth": "wide"}, {"bandwidth": 0}, {"select": -1}):
        with pytest.raises(ConfigError):
            ScopedKDEDetector(**bad)
    with pytest.raises(ConfigError, match="select to null"):  # a count that `all` would silently ignore
        ScopedKDEDetector(select=2, selection="all")
    assert ScopedKDEDetector(select=None, selection="all").selection == "all"


def _features(norm2: np.ndarray, trace: np.ndarray) -> np.ndarray:
    return np.stack([norm2, trace], axis=2).reshape(len(norm2), -1)


def test_statistics_and_stein_selection_by_hand():
    rng = np.random.default_rng(0)
    n = 200
    # level 0 satisfies Stein's identity on the ID set (mean ratio 1), level 1 is off by 2×, level 2 by 1.2×
    trace = -np.column_stack([np.full(n, 10.0), np.full(n, 10.0), np.full(n, 10.0)])
    norm2 = np.column_stack([rng.normal(10, 1, n), rng.normal(20, 1, n), rng.normal(12, 1, n)])
    feats = _features(norm2, trace)
    np.testing.assert_allclose(statistic(feats, "ratio"), norm2 / 10)
    np.testing.assert_allclose(statistic(feats, "hyvarinen"), norm2 - 20)
    assert statistic(feats, "both").shape == (n, 6)
    assert choose_levels(feats, 2, "stein").tolist() == [0, 2]
    assert choose_levels(feats, 1, "stein").tolist() == [0]
    assert choose_levels(feats, None, "stein").tolist() == [0, 1, 2]
    assert choose_levels(feats, 2, "all").tolist() == [0, 1, 2]
    # spread: level 1 has the smallest relative spread (sd 1 around 20)
    assert choose_levels(feats, 1, "spread").tolist() == [1]


def test_kde_scores_outliers_higher_and_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    id_feats = _features(rng.normal(10, 1, (300, 3)), -np.full((300, 3), 10.0))
    far = _features(rng.normal(30, 1, (50, 3)), -np.full((50, 3), 10.0))
    det = make_detector("scoped_kde", None).fit(id_feats)
    # the default chosen by experiments/scoped/RULE.md: both parts at every level (6 KDE columns here)
    assert (det.statistic, det.levels_.tolist(), det.bandwidth) == ("both", [0, 1, 2], "scott")
    assert det._columns(id_feats).shape == (300, 6)
    paper = ScopedKDEDetector(statistic="ratio", select=2, selection="stein").fit(id_feats)
    assert paper.levels_.tolist() == choose_levels(id_feats, 2, "stein").tolist()
    assert paper.score(far).min() > paper.score(id_feats[:50]).max()
    s_id, s_far = det.score(id_feats[:50]), det.score(far)
    assert s_far.min() > s_id.max()
    det.save(tmp_path / "d")
    again = load_detector(tmp_path / "d")
    assert isinstance(again, ScopedKDEDetector)
    np.testing.assert_array_equal(again.score(far), s_far)
    with pytest.raises(ConfigError, match="at least 2"):
        ScopedKDEDetector().fit(id_feats[:1])
    # a folder saved before `select` with `all` was refused (select 2 was the default then) loads as it scored then
    meta = json.loads((tmp_path / "d.json").read_text())
    meta["settings"].update(statistic="ratio", select=2, selection="all")
    (tmp_path / "d.json").write_text(json.dumps(meta))
    old = load_detector(tmp_path / "d")
    assert old.levels_.tolist() == [0, 1, 2] and old.select is None


def test_levels_are_chosen_on_id_data_only(smoke_checkpoint, tmp_path):
    """`zsad evaluate` with two different OOD sets: the same levels, and the ones choose_levels gives on the
    ID-train features alone."""
    from conftest import run_cli

    levels = []
    for ood in ("digits", "noise"):
        out = tmp_path / ood
        run_cli("evaluate", "-c", "conf/eval/smoke.yaml", f"backbone.path={smoke_checkpoint}", f"output_dir={out}",
                "scorers=[{name: scoped, options: {levels: 4}}]", "id=[gradients]", f"ood=[gradients, {ood}]", "far_pairs=[]",
                "bootstrap=0", "logger=none", "detector.scoped_kde.select=2")
        meta = json.loads((out / "detectors" / "scoped" / "gradients.json").read_text())
        levels.append(meta["levels"])
        fitted = load_detector(out / "detectors" / "scoped" / "gradients")
        assert meta["levels"] == choose_levels(fitted.train_, 2, "stein").tolist()
    assert levels[0] == levels[1] and len(levels[0]) == 2


@pytest.mark.parametrize("scorer,kind", [("scoped", "ScopedKDEDetector"), ("ufcod", "SoftMinKNNDetector")])
def test_zsad_fit_uses_the_methods_own_detector(scorer, kind, trained_checkpoint, tmp_path):
    """`zsad fit --scorer scoped|ufcod` fits SCOPED's KDE / UFCOD's soft-min kNN (not a Gaussian mixture), and the
    saved folder scores the same after loading."""
    from PIL import Image

    from zsad import AnomalyDetector
    from zsad.data import make_builtin
    from zsad.detection.card import card_text

    for i, a in enumerate(make_builtin("clouds", "train", 40)):
        (tmp_path / "normal").mkdir(exist_ok=True)
        Image.fromarray(a).save(tmp_path / "normal" / f"n{i:03d}.png")
    options = {"levels": 2} if scorer == "scoped" else {"steps": 2}
    det = AnomalyDetector.fit(tmp_path / "normal", backbone=str(trained_checkpoint), scorer=scorer, scorer_options=options,
                              false_alarm_rate=0.2, working_size=16, device="cpu", cache_dir=tmp_path / "cache", batch_size=20, network_batch=20)
    assert type(det.detector).__name__ == kind
    assert "Gaussian mixture" not in card_text(det)
    noise = torch.from_numpy(make_builtin("noise", "test", 6)).permute(0, 3, 1, 2).float() / 255
    before = det.score(noise)
    det.save(tmp_path / "det")
    again = AnomalyDetector.load(tmp_path / "det", device="cpu")
    assert type(again.detector).__name__ == kind
    np.testing.assert_array_equal(again.score(noise).scores, before.scores)


@pytest.mark.parametrize("flags", [["--scorer", "scoped"], ["--detector-kind", "softmin_knn"]])
def test_tile_position_is_refused_for_detectors_that_take_no_positions(flags, tmp_path):
    from conftest import run_inprocess
    from PIL import Image

    (tmp_path / "normal").mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (i, 2 * i, 3 * i)).save(tmp_path / "normal" / f"{i}.png")
    result = run_inprocess("fit", str(tmp_path / "normal"), "-o", str(tmp_path / "det"), *flags, "--tile-position", "--backbone", "random")
    assert result.returncode != 0
    assert "Leave --tile-position off or use --detector-kind gmm." in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr and not (tmp_path / "det").exists()
