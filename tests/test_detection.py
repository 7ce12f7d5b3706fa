"""Anomaly detection on a user's own images (docs/method.md §7): `zsad fit` / `zsad score` / the Python API,
one code path; the false-alarm rate holds on images; maps, overlays, bad input, memory."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, run_cli, run_inprocess
from PIL import Image
from scipy.stats import betabinom

from zsad.data import make_builtin

# Cheap settings for a tiny 16 px checkpoint: two network evaluations per tile.
CHEAP = {"scorer": "diffpath_v2", "scorer_options": {"steps": 2}, "batch_size": 20, "network_batch": 20}


def write_images(folder: Path, arrays: np.ndarray, prefix: str = "img", size: int | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, a in enumerate(arrays):
        img = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
        if size:
            img = img.resize((size, size), Image.BILINEAR)
        paths.append(folder / f"{prefix}_{i:04d}.png")
        img.save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    """normal/ (100 clouds), held_out/ (100 other clouds from the same generator), noise/ (40 noise images)."""
    root = tmp_path_factory.mktemp("detect")
    write_images(root / "normal", make_builtin("clouds", "train", 100), "n")
    write_images(root / "held_out", make_builtin("clouds", "test", 100), "h")
    write_images(root / "noise", make_builtin("noise", "test", 40), "x")
    return root


@pytest.fixture(scope="module")
def whole(folders, trained_checkpoint, tmp_path_factory):
    """A whole-image detector (one tile per image) at α = 0.2, fitted through the API."""
    from zsad import AnomalyDetector

    cache = tmp_path_factory.mktemp("cache")
    det = AnomalyDetector.fit(folders / "normal", backbone=str(trained_checkpoint), false_alarm_rate=0.2, working_size=16, device="cpu",
                              cache_dir=cache, **CHEAP)
    return det


def test_held_out_normals_are_flagged_at_the_fitted_rate(whole, folders):
    """m held-out normal images: the flag count lies inside the 99.9% interval of beta-binomial(m, k, n_cal − k + 1)."""
    from zsad.detection.conformal import flag_rank

    n_cal = whole.calibration.n
    assert n_cal == 20 and whole.info["n_fit"] == 80 and whole.tiling.count == 1
    res = whole.score(folders / "held_out")
    k = flag_rank(0.2, n_cal)
    lo, hi = betabinom(100, k, n_cal - k + 1).interval(0.999)
    assert lo <= res.is_anomaly.sum() <= hi, f"{res.is_anomaly.sum()} of 100 flagged; the law allows {lo:.0f}–{hi:.0f}"
    assert np.array_equal(res.is_anomaly, res.p_values <= 0.2) and res.files[0] == "h_0000.png"
    assert res.maps[0].shape == (32, 32), "maps at the input's own resolution"


def test_a_clearly_anomalous_set_is_flagged(whole, folders):
    res = whole.score(folders / "noise")
    assert res.is_anomaly.mean() >= 0.9, res.scores
    assert np.median(res.p_values) == 1 / 21, "most noise images score above every calibration image"


def test_whole_image_scores_are_the_detector_scores_standardised(whole, folders):
    """With one tile the image score is the GMM score, standardised by the fit images' (no other transform)."""
    res = whole.score(folders / "held_out", with_maps=False)
    raw = whole.detector.score(res.features)
    assert np.allclose(res.scores, (raw - whole.maps.tile_mean) / whole.maps.tile_std, rtol=1e-12)


def test_inputs_of_every_kind_give_the_same_scores(whole, folders):
    files = sorted((folders / "held_out").glob("*.png"))[:4]
    arrays = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    reference = whole.score(files).scores
    for inputs in ([Image.open(f) for f in files], arrays, list(arrays), torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255):
        assert np.array_equal(whole.score(inputs).scores, reference), type(inputs)
    from zsad.errors import ConfigError

    for bad in (42, {"a": 1}, [1, 2], np.zeros((4, 4, 4, 5), np.uint8), torch.rand(2, 3, 8, 8) * 3):
        with pytest.raises(ConfigError):
            whole.score(bad)


def test_a_changed_false_alarm_rate_at_scoring_time(whole, folders):
    res = whole.score(folders / "held_out", false_alarm_rate=0.5, with_maps=False)
    assert np.array_equal(res.is_anomaly, res.p_values <= 0.5) and res.false_alarm_rate == 0.5


@pytest.fixture(scope="module")
def fitted_folder(folders, trained_checkpoint, tmp_path_factory):
    """`zsad fit` on the CLI: tiles (32 px working size, 16 px tiles every 8 px), the fused scorer's maps; 50 normal images."""
    out = tmp_path_factory.mktemp("fit") / "det"
    small = out.parent / "normal50"
    small.mkdir()
    for f in sorted((folders / "normal").glob("*.png"))[:50]:
        shutil.copy(f, small / f.name)
    proc = run_cli("fit", str(small), "-o", str(out), "--backbone", str(trained_checkpoint), "--working-size", "32", "--tile-stride", "8",
                   "--device", "cpu", "--cache-dir", str(out.parent / "cache"), "--false-alarm-rate", "0.1", "--batch-size", "20")
    return out, proc


def test_fit_writes_one_folder_with_a_card(fitted_folder):
    out, proc = fitted_folder
    assert sorted(p.name for p in out.iterdir()) == ["calibration.npz", "card.md", "detector.json", "detector.npz", "recipe.json", "settings.json"]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["tiling"] == {"height": 32, "width": 32, "tile": 16, "stride": 8} and settings["network_evaluations_per_image"] == 9 * 10  # 5 steps
    assert settings["maps"]["combination"] == "tile+pixel" and settings["maps"]["vmin"] < settings["maps"]["threshold"] < settings["maps"]["vmax"]
    card = (out / "card.md").read_text()
    assert "`diffpath_fused` version 1+1+1 (steps 5, clip_denoised True)" in card
    assert "α = 0.1" in card and re.search(r"Beta\(1, 10\).*90% of calibration sets give between", card)
    assert "summary" in proc.stdout and "calibrated on 10 other normal images" in proc.stdout and "90 network evaluations per image" in proc.stdout


def test_score_writes_rows_overlays_and_a_contact_sheet(fitted_folder, folders, tmp_path):
    out, _ = fitted_folder
    mixed = tmp_path / "mixed"
    for f in sorted((folders / "held_out").glob("*.png"))[:6]:
        (mixed / "good").mkdir(parents=True, exist_ok=True)
        shutil.copy(f, mixed / "good" / f.name)
    for f in sorted((folders / "noise").glob("*.png"))[:3]:
        (mixed / "bad").mkdir(parents=True, exist_ok=True)
        shutil.copy(f, mixed / "bad" / f.name)
    proc = run_cli("score", str(mixed), "--detector", str(out), "--heatmaps", "--out", str(tmp_path / "result"), "--device", "cpu")
    with open(tmp_path / "result" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == sorted(r["file"] for r in rows), "the folder's own order"
    assert list(rows[0])[:5] == ["file", "anomaly_score", "p_value", "is_anomaly", "worst_tile"] and len(rows[0]) == 5 + 12
    flagged = {r["file"] for r in rows if r["is_anomaly"] == "true"}
    assert {f"bad/x_{i:04d}.png" for i in range(3)} <= flagged
    assert all(float(r["p_value"]) <= 0.1 for r in rows if r["is_anomaly"] == "true")
    heat = tmp_path / "result" / "heatmaps"
    assert sorted(p.relative_to(heat).as_posix() for p in heat.rglob("*_overlay.png")) == sorted(r["file"].replace(".png", "_overlay.png") for r in rows)
    sheet = Image.open(heat / "contact_sheet.png")
    assert sheet.width >= 1000
    overlay = Image.open(heat / "bad" / "x_0000_overlay.png")
    assert overlay.height == 256 and overlay.width > 256, "a small input is enlarged by a whole factor, with a colour bar beside it"
    assert f"flagged:   {len(flagged)} of 9" in proc.stdout and "most anomalous:" in proc.stdout and "bad/x_000" in proc.stdout


def test_the_cli_and_the_api_give_the_same_numbers(fitted_folder, folders, tmp_path):
    from zsad import AnomalyDetector

    out, _ = fitted_folder
    few = tmp_path / "few"
    few.mkdir()
    for f in sorted((folders / "noise").glob("*.png"))[:8] + sorted((folders / "held_out").glob("*.png"))[:8]:
        shutil.copy(f, few / f.name)
    run_cli("score", str(few), "--detector", str(out), "--out", str(tmp_path / "s.csv"), "--device", "cpu")
    with open(tmp_path / "s.csv") as f:
        cli = {r["file"]: (float(r["anomaly_score"]), float(r["p_value"])) for r in csv.DictReader(f)}
    res = AnomalyDetector.load(out, device="cpu").score(few, with_maps=False)
    assert len(cli) == 16
    assert {n: (s, p) for n, s, p in zip(res.files, res.scores, res.p_values)} == cli


def test_a_detector_folder_refuses_another_scorer_version_and_other_weights(fitted_folder, trained_checkpoint, tmp_path, monkeypatch):
    from zsad import AnomalyDetector
    from zsad.scoring.recipe import RecipeMismatchError
    from zsad.scoring.scorers.diffpath_v2 import DiffPathV2

    out, _ = fitted_folder
    monkeypatch.setattr(DiffPathV2, "version", DiffPathV2.version + 1)  # the code of the fused scorer's V2 half changed
    with pytest.raises(RecipeMismatchError, match=r"version of scorer diffpath_fused: recorded \"1\+1\+1\", today \"1\+1\+2\".*[Rr]efit"):
        AnomalyDetector.load(out, device="cpu")
    monkeypatch.undo()
    ckpt = torch.load(trained_checkpoint, weights_only=True)
    key = next(k for k in ckpt["state_dict"] if k.startswith("ema.ema_model.model."))
    ckpt["state_dict"][key] = ckpt["state_dict"][key] + 1e-3
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(RecipeMismatchError, match=r"backbone weights \(sha256\)"):
        AnomalyDetector.load(out, device="cpu", backbone=str(tmp_path / "other.ckpt"))


def test_a_recipe_moved_with_its_weights_is_accepted(fitted_folder, trained_checkpoint, tmp_path):
    from zsad import AnomalyDetector

    out, _ = fitted_folder
    shutil.copy(trained_checkpoint, tmp_path / "moved.ckpt")
    det = AnomalyDetector.load(out, device="cpu", backbone=str(tmp_path / "moved.ckpt"))
    assert det.recipe.weights_sha256 == det.backbone.identity["sha256"]


def test_bad_input_gets_a_clear_error_and_leaves_nothing_behind(folders, fitted_folder, trained_checkpoint, tmp_path):
    out, _ = fitted_folder
    ck = ["--backbone", str(trained_checkpoint), "--device", "cpu", "--working-size", "16"]
    (tmp_path / "empty").mkdir()
    cases = [
        (["fit", str(tmp_path / "empty"), "-o", str(tmp_path / "d1"), *ck], "holds no images"),
        (["fit", str(folders / "normal"), "-o", str(tmp_path / "d2"), "--false-alarm-rate", "1.5", *ck], "strictly between 0 and 1"),
        (["fit", str(folders / "normal"), "-o", str(tmp_path / "d3"), "--false-alarm-rate", "0.005", *ck], r"needs 199 calibration images.*Add normal images"),
        (["fit", str(folders / "normal"), "-o", str(folders / "normal" / "det"), *ck], "inside the input folder"),
        (["fit", str(folders / "normal"), "-o", str(out), *ck], "already exists and is not empty.*--force"),
        (["score", str(tmp_path / "empty"), "--detector", str(out)], "holds no images"),
        (["score", str(folders / "noise"), "--detector", str(out), "--out", str(folders / "noise" / "x")], "inside the input folder"),
        (["score", str(folders / "noise"), "--detector", str(tmp_path / "nothing")], "No detector at"),
        (["fit", str(tmp_path / "with_broken"), "-o", str(tmp_path / "d4"), *ck], r"Cannot read an image.*--skip-corrupt"),
    ]
    (tmp_path / "with_broken").mkdir()
    for f in sorted((folders / "normal").glob("*.png"))[:40]:
        shutil.copy(f, tmp_path / "with_broken" / f.name)
    (tmp_path / "with_broken" / "zz_broken.png").write_bytes(b"\x89PNG not really")
    for args, message in cases:
        proc = run_inprocess(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and re.search(message, proc.stderr, re.S), (args, proc.stderr[-800:])
    assert not any((tmp_path / f"d{i}").exists() for i in (1, 2, 3, 4)) and not (folders / "normal" / "det").exists()
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    (damaged / "settings.json").write_text("{not json")
    proc = run_inprocess("score", str(folders / "noise"), "--detector", str(damaged))
    assert proc.returncode == 2 and "settings.json is damaged" in proc.stderr
    (damaged / "settings.json").unlink()
    proc = run_inprocess("score", str(folders / "noise"), "--detector", str(damaged))
    assert proc.returncode == 2 and "settings.json is missing" in proc.stderr


def test_odd_images_are_converted_and_corrupt_ones_named_or_skipped(whole, tmp_path):
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.fromarray(np.full((40, 24), 120, np.uint8)).save(odd / "grey.png")
    Image.fromarray(np.full((20, 30, 4), 90, np.uint8), "RGBA").save(odd / "rgba.png")
    Image.fromarray(np.full((17, 17), 200, np.uint16)).save(odd / "sixteen.png")  # a 16-bit file holding 8-bit values
    Image.fromarray(np.full((64, 8, 3), 200, np.uint8)).save(odd / "thin.png")
    res = whole.score(odd)
    assert res.files == ["grey.png", "rgba.png", "sixteen.png", "thin.png"] and np.isfinite(res.scores).all()
    assert [m.shape for m in res.maps] == [(40, 24), (20, 30), (17, 17), (64, 8)]
    from zsad.errors import ConfigError

    wide = tmp_path / "wide"
    wide.mkdir()
    Image.fromarray(np.full((17, 17), 40000, np.uint16)).save(wide / "sixteen.png")
    with pytest.raises(ConfigError, match=r"values up to 40000, beyond this run's 8-bit range.*--bit-depth"):
        whole.score(wide)  # fitted on 8-bit images: a 16-bit image is not silently clipped to white
    (odd / "broken.png").write_bytes(b"\x89PNG not really")
    from zsad.errors import CorruptImageError

    with pytest.raises(CorruptImageError, match=r"broken\.png.*skip_corrupt"):
        whole.score(odd)
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        assert whole.score(odd, skip_corrupt=True).files == ["grey.png", "rgba.png", "sixteen.png", "thin.png"]


def test_readme_example_runs(folders, trained_checkpoint, tmp_path, monkeypatch):
    """The README's Python example, as written, with a tiny checkpoint placed where `zsad-demo` is looked up."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README keeps the API example after an <!-- api-example --> marker"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs/demo/train/checkpoints").mkdir(parents=True)
    shutil.copy(trained_checkpoint, tmp_path / "outputs/demo/train/checkpoints/last.ckpt")
    for name, source, count in (("normal", "normal", 40), ("to_check", "noise", 10)):
        (tmp_path / name).mkdir()
        for f in sorted((folders / source).glob("*.png"))[:count]:
            shutil.copy(f, tmp_path / name / f.name)
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    res = namespace["res"]
    assert len(res.files) == 10 and res.p_values is not None and len(res.maps) == 10 and (tmp_path / "det" / "card.md").is_file()


@pytest.mark.slow  # about 4 minutes on 2 cores (1,100 overlays of 512 px images): `make test-slow`
def test_scoring_memory_stays_flat(fitted_folder, tmp_path):
    """Peak RSS of `zsad score --heatmaps` in a fresh process on the tiled path (9 tiles per image, per-pixel maps),
    512 px inputs: 1,000 images use at most 20 MB more than 100 (one leaked full-resolution map per image would be
    about 1 MB each, so 900 MB). RSS sees torch's and PIL's buffers, which tracemalloc does not."""
    import sys

    out, _ = fitted_folder
    sources = make_builtin("clouds", "test", 8)
    peaks = {}
    for count in (100, 1000):
        folder = tmp_path / f"big{count}"
        folder.mkdir()
        for i in range(count):  # hard links of 8 distinct 512 px images: real files, cheap to make
            target = folder / f"{i:04d}.png"
            if i < 8:
                Image.fromarray(sources[i]).resize((512, 512), Image.BILINEAR).save(target)
            else:
                target.hardlink_to(folder / f"{i % 8:04d}.png")
        code = ("import resource, sys; from zsad.detection.score import score_folder; "
                f"s = score_folder({str(folder)!r}, {str(out)!r}, out={str(tmp_path / f'out{count}')!r}, heatmaps=True, batch_size=20, device='cpu'); "
                "print('PEAK', s.n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        n, kib = proc.stdout.split("PEAK")[-1].split()
        assert int(n) == count and len(list((tmp_path / f"out{count}" / "heatmaps").glob("*_overlay.png"))) == count
        peaks[count] = int(kib) / 1024
    assert peaks[1000] - peaks[100] <= 20, f"peak RSS {peaks[1000]:.0f} MiB for 1,000 images vs {peaks[100]:.0f} MiB for 100"


@pytest.fixture(scope="module")
def large(trained_checkpoint, tmp_path_factory):
    """A whole-image detector fitted on 1,000 normal images at α = 0.2: 200 calibration images, so that a detector
    flagging at 2α falls outside the rate test's 99.9% band (with 20, the band took anything from 0 to 57 of 100)."""
    from zsad import AnomalyDetector

    det = AnomalyDetector.fit(make_builtin("clouds", "train", 1000), backbone=str(trained_checkpoint), false_alarm_rate=0.2, working_size=16,
                              device="cpu", cache_dir=tmp_path_factory.mktemp("cache_large"), **CHEAP)
    return det, det.score(make_builtin("clouds", "test", 300))


def test_the_rate_holds_and_a_doubled_rate_would_fail_the_test(large):
    from zsad.detection.conformal import flag_rank

    det, res = large
    n_cal, m = det.calibration.n, len(res.scores)
    k = flag_rank(0.2, n_cal)
    lo, hi = betabinom(m, k, n_cal - k + 1).interval(0.999)
    assert n_cal == 200 and hi < 2 * 0.2 * m, "the band must exclude a detector that flags at 2α"
    assert lo <= res.is_anomaly.sum() <= hi, f"{res.is_anomaly.sum()} of {m} flagged; the law allows {lo:.0f}–{hi:.0f}"


def test_a_normal_image_shows_an_outline_at_most_at_the_rate(large):
    """The outline threshold is the k-th largest calibration map maximum: held-out normal images show any outline
    as often as they are flagged (the beta-binomial band). The old rule, the (1 − α) quantile of all normal pixels,
    outlines most normal images."""
    from zsad.detection.conformal import flag_rank

    det, res = large
    maxima = np.array([m.max() for m in res.maps])
    outlined = int((maxima > det.maps.threshold).sum())
    n_cal, m = det.calibration.n, len(maxima)
    k = flag_rank(0.2, n_cal)
    lo, hi = betabinom(m, k, n_cal - k + 1).interval(0.999)
    assert lo <= outlined <= hi, f"{outlined} of {m} normal images outlined; the law allows {lo:.0f}–{hi:.0f}"
    old = np.quantile(np.concatenate([mp.ravel() for mp in res.maps]), 1 - 0.2)
    assert (maxima > old).mean() > 0.5, "the pooled-pixel quantile outlines most normal images (what this threshold fixes)"


def test_a_rate_the_calibration_cannot_reach_is_refused(whole, fitted_folder, folders, tmp_path):
    """k = ⌊α(n_cal + 1)⌋ = 0 would flag nothing and say nothing: score and the API refuse it, naming the size α needs."""
    from zsad.errors import ConfigError

    with pytest.raises(ConfigError, match=r"0\.001 needs at least 999 normal calibration images.*has 20.*--false-alarm-rate 0\.0477"):
        whole.score(folders / "noise", false_alarm_rate=0.001)
    out, _ = fitted_folder
    proc = run_inprocess("score", str(folders / "noise"), "--detector", str(out), "--false-alarm-rate", "0.01", "--out", str(tmp_path / "s.csv"))
    assert proc.returncode == 2 and "needs at least 99 normal calibration images" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "s.csv").exists(), "refused before anything is written"


def test_a_card_without_a_reachable_rate_says_no_rate(whole, monkeypatch):
    """As `zsad test` saves detectors fitted on too few images: the card says "no rate" and why, never "Beta(0, …)"."""
    from dataclasses import replace

    from zsad.detection.card import card_text

    monkeypatch.setattr(whole, "calibration", replace(whole.calibration, false_alarm_rate=0.01))  # 20 calibration images: k = 0
    text = card_text(whole)
    assert "no rate" in text.lower() and "Beta(0" not in text and "needs at least 99 calibration images" in text


def test_an_older_or_edited_detector_folder_is_refused(fitted_folder, tmp_path, monkeypatch):
    from zsad import AnomalyDetector
    from zsad.detection import model
    from zsad.detection.model import DetectorFolderError
    from zsad.scoring.recipe import RecipeMismatchError

    out, _ = fitted_folder
    old = tmp_path / "old"
    shutil.copytree(out, old)
    settings = json.loads((old / "settings.json").read_text())
    (old / "settings.json").write_text(json.dumps({**settings, "format": 1}))
    with pytest.raises(DetectorFolderError, match=r"format 1; this zsad reads format 2.*Fit it again"):
        AnomalyDetector.load(old, device="cpu")
    (old / "settings.json").write_text(json.dumps({**settings, "tiling": {**settings["tiling"], "stride": 16}}))
    with pytest.raises(DetectorFolderError, match="tiling.*differs from the recipe"):
        AnomalyDetector.load(old, device="cpu")
    (old / "settings.json").write_text(json.dumps(settings))
    with np.load(out / "calibration.npz") as data:
        arrays = dict(data)
    np.savez(old / "calibration.npz", **{**arrays, "map_maxima": arrays["map_maxima"][:-1]})  # one image's maximum lost
    with pytest.raises(DetectorFolderError, match="calibration file is damaged.*10 calibration scores but 9 map maxima"):
        AnomalyDetector.load(old, device="cpu")
    monkeypatch.setattr(model, "PREPROCESSING_VERSION", model.PREPROCESSING_VERSION + 1)  # today's preprocessing code changed
    with pytest.raises(RecipeMismatchError, match="preprocessing"):
        AnomalyDetector.load(out, device="cpu")


def test_the_working_shape_follows_the_images(trained_checkpoint, tmp_path):
    """No upsampling by default, the aspect ratio kept: 16 px images with a 16 px backbone are one tile; 24×40 px
    images give a 24×40 working shape tiled over both axes, and maps come back at the input's shape."""
    from zsad import AnomalyDetector

    clouds = make_builtin("clouds", "train", 40)
    small = [Image.fromarray(a).resize((16, 16), Image.BILINEAR) for a in clouds]
    det = AnomalyDetector.fit(small, backbone=str(trained_checkpoint), false_alarm_rate=0.2, device="cpu", cache_dir=tmp_path / "c1", **CHEAP)
    assert det.tiling.count == 1 and det.tiling.shape == (16, 16) and "own size" in det.info["working_shape_reason"]
    wide = [Image.fromarray(a).resize((40, 24), Image.BILINEAR) for a in clouds]
    det = AnomalyDetector.fit(wide, backbone=str(trained_checkpoint), false_alarm_rate=0.2, device="cpu", cache_dir=tmp_path / "c2", **CHEAP)
    assert det.tiling.shape == (24, 40) and det.tiling.offsets == [(0, 0), (0, 8), (0, 16), (0, 24), (8, 0), (8, 8), (8, 16), (8, 24)]
    res = det.score(wide[:2] + [Image.fromarray(clouds[0]).resize((20, 50))])
    assert [m.shape for m in res.maps] == [(24, 40), (24, 40), (50, 20)]


def test_wide_twins_of_8_bit_images_give_the_same_scores(trained_checkpoint, tmp_path):
    """One bit-depth rule per run, decided on the fit images: 16-bit copies x·257 and 12-bit copies x·16 of 8-bit
    images x give the 8-bit detector's scores (the old per-image rule made x·16 almost black)."""
    from zsad import AnomalyDetector

    train, test = make_builtin("clouds", "train", 40), make_builtin("clouds", "test", 6)
    scores = {}
    for name, factor in (("8", None), ("16", 257), ("12", 16)):
        fit = train if factor is None else train.astype(np.uint16) * factor
        det = AnomalyDetector.fit(list(fit), backbone=str(trained_checkpoint), false_alarm_rate=0.2, working_size=16, device="cpu",
                                  cache_dir=tmp_path / name, **CHEAP)
        assert det.bit_depth == int(name)
        scores[name] = det.score(list(test if factor is None else test.astype(np.uint16) * factor), with_maps=False).scores
    assert np.allclose(scores["16"], scores["8"], rtol=0, atol=1e-4) and np.allclose(scores["12"], scores["8"], rtol=0, atol=1e-4)


def test_a_long_run_says_so_first_and_names_faster_settings(fitted_folder, monkeypatch, capsys):
    """`zsad fit` prints its expected time before the work (from one timed call); past 10 minutes on a CPU it names
    the settings that would cut it most, each with its own estimate."""
    from zsad import AnomalyDetector
    from zsad.detection import model

    out, proc = fitted_folder
    lines = proc.stdout.splitlines()
    first_progress = next(i for i, line in enumerate(lines) if "expected time" in line)
    assert lines[0].startswith("[fit] working shape 32×32 px") and first_progress <= 4, lines[:6]
    det = AnomalyDetector.load(out, device="cpu")
    monkeypatch.setattr(model, "seconds_per_evaluation", lambda bb, rows: 0.5)
    seconds = det.say_estimate(100, "[score] expected time for 100 images")
    said = capsys.readouterr().out
    assert seconds == pytest.approx(100 * 90 * 0.5) and "about 75 min" in said  # 9 tiles × 10 evaluations (5 steps)
    assert "--tile-stride 16: 4 tile(s) per image, about 33 min" in said and "--working-size 16: 1 tile(s)" in said


def test_outlines_follow_the_rate_decisions_are_made_at(fitted_folder):
    """`zsad score --false-alarm-rate α'` outlines at α': the threshold is the k'-th largest saved calibration map maximum."""
    from zsad import AnomalyDetector
    from zsad.detection.maps import map_threshold

    out, _ = fitted_folder
    det = AnomalyDetector.load(out, device="cpu")
    maxima = det.calibration.map_maxima
    assert maxima is not None and len(maxima) == det.calibration.n == 10
    assert det.maps_at(det.false_alarm_rate) is det.maps and det.maps.threshold == map_threshold(maxima, 0.1)
    wider = det.maps_at(0.3)
    assert wider.threshold == map_threshold(maxima, 0.3) < det.maps.threshold and wider.vmin == det.maps.vmin


def test_a_detector_fitted_on_a_gpu_gets_a_cpu_call_size_when_loaded_on_a_cpu(fitted_folder, folders, tmp_path):
    """The recorded call size is the fitting device's (256 rows on a GPU); on a CPU the loaded detector takes the one
    `zsad fit` chooses there, and its scores are the same up to float rounding."""
    from zsad import AnomalyDetector

    out, _ = fitted_folder
    gpu = tmp_path / "gpu"
    shutil.copytree(out, gpu)
    recipe = json.loads((gpu / "recipe.json").read_text())
    (gpu / "recipe.json").write_text(json.dumps({**recipe, "device": "cuda:NVIDIA H100 80GB HBM3", "network_batch": 256}))
    here, there = AnomalyDetector.load(out, device="cpu"), AnomalyDetector.load(gpu, device="cpu")
    assert here.scorer.network_batch == there.scorer.network_batch == 64  # the demo model is small: calls of 64 on a CPU
    images = sorted((folders / "held_out").glob("*.png"))[:4]
    np.testing.assert_allclose(there.score(images).scores, here.score(images).scores, rtol=1e-5)


def test_cpu_network_calls_fit_the_tiles_of_an_image():
    """Calls are padded to their full size: on a CPU a large network's image of few tiles gets calls near its own size
    (a multiple of 8, up to 64), so one small image does not compute 64 rows for 4; a small network, bound by per-call
    overhead, keeps calls of 64; GPUs keep the scorers' default."""
    import torch

    from zsad.detection.model import default_network_batch

    cpu, large, small = torch.device("cpu"), 52_500_000, 350_000
    assert [default_network_batch(cpu, t, large) for t in (1, 4, 8, 9, 16, 49, 64, 225)] == [8, 8, 8, 16, 16, 56, 64, 64]
    assert {default_network_batch(cpu, t, small) for t in (1, 4, 9, 225)} == {64}
    assert default_network_batch(torch.device("cuda"), 4, large) is None
