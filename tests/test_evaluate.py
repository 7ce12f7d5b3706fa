"""Issue 3: `zsad evaluate` end to end, caching, multi-process equivalence, resume, and user errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, run_inprocess
from omegaconf import OmegaConf

from zsad.utils.wandb_offline import find_offline_runs, read_offline_run

SMOKE_EVAL = ["evaluate", "-c", "conf/eval/smoke.yaml"]


@pytest.fixture(scope="module")
def smoke_eval(smoke_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke_eval")
    first = run_cli(*SMOKE_EVAL, f"backbone.path={smoke_checkpoint}", f"output_dir={out}")
    return out, first


def test_evaluate_writes_every_output(smoke_eval):
    out, first = smoke_eval
    for name in ("results.csv", "results.md", "results.json", "config.yaml"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert {r["scorer"] for r in rows} == {"diffpath_v2", "diffpath_6d", "diffpath_1d", "recon"}
    assert len(rows) == 4 * 2 * 2  # scorers × ID × (OOD ≠ ID)
    for r in rows:
        assert 0 <= r["auroc"] <= 1 and r["auroc_ci_low"] <= r["auroc"] + 1e-9 and r["auroc"] - 1e-9 <= r["auroc_ci_high"]
    assert {(r["id"], r["ood"]) for r in rows if r["shift"] == "far"} == {("gradients", "noise"), ("digits", "noise")}
    assert {m["ood"] for m in results["means"]} == {"all", "far", "near"}
    md = (out / "results.md").read_text()
    assert "| diffpath_v2 | gradients | noise | far |" in md and "**mean**" in md
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert "roc_diffpath_v2_gradients.png" in plots and "hist_recon_digits.png" in plots and "auroc_recon.png" in plots
    assert len(plots) == 16 + 4, "ROC and histogram per (scorer, ID set), one AUROC heat map per scorer"
    assert (out / "detectors" / "diffpath_v2" / "digits.json").is_file()
    # 3 scorers × (2 ID-train + 3 test splits); DiffPath-1D comes from DiffPath-6D's features (same inversion)
    assert results["timing"]["extractions_run"] == 3 * 5 and results["extractions"]["derived"] == 5
    assert "[extract]" in first.stdout


def test_evaluate_prints_stages_and_a_summary_not_lightning_noise(smoke_eval):
    _, first = smoke_eval
    everything = first.stdout + first.stderr
    assert "Tip" not in everything and "litlogger" not in everything and "Predicting" not in everything
    assert everything.count("GPU available") <= 1
    assert "[detect] fitting 8 detector(s)" in first.stdout and "[metrics] 16 pairs" in first.stdout
    summary = first.stdout[first.stdout.index("── summary"):]
    assert re.search(r"stages: +setup [\d.]+ s · extraction [\d.]+ s · detectors [\d.]+ s · metrics [\d.]+ s · plots [\d.]+ s", summary), summary
    # (2 × 48 fit + 3 × 24 test images) × (5 V2 + 5 DiffPath-6D + 2 levels × 4 recon steps) network evaluations
    assert "features:  15 extraction(s) computed (504 images, 3,024 network evaluations), 0 read from cache" in summary
    assert "5 derived from another scorer's features" in summary
    assert "diffpath_v2/gradients" in summary and "GMM 2 components, diag covariance (fixed)" in summary
    sync = re.search(r"upload it with: wandb sync (\S+)", summary)
    assert sync and Path(sync.group(1)).is_dir() and Path(sync.group(1)).name.startswith("offline-run-"), summary


def test_second_run_reuses_the_cache(smoke_eval, smoke_checkpoint):
    out, _ = smoke_eval
    again = run_cli(*SMOKE_EVAL, f"backbone.path={smoke_checkpoint}", f"output_dir={out}")
    assert "[extract]" not in again.stdout and again.stdout.count("[cache]") == 15
    assert json.loads((out / "results.json").read_text())["timing"]["extractions_run"] == 0


def test_wandb_run_holds_table_and_scalars(smoke_eval):
    out, _ = smoke_eval
    run_dirs = find_offline_runs(out)
    runs = [read_offline_run(p) for p in run_dirs]
    assert runs and all(r["exit_code"] == 0 for r in runs)
    logged = {k: v for r in runs for row in r["history"] for k, v in row.items()}
    assert logged["ood/results"]["_type"] == "table-file" and logged["ood/results"]["nrows"] == 16
    table = json.loads((run_dirs[-1] / "files" / logged["ood/results"]["path"]).read_text())
    assert table["columns"][:3] == ["scorer", "id", "ood"] and len(table["data"]) == 16
    rows = json.loads((out / "results.json").read_text())["rows"]
    row = next(r for r in rows if (r["scorer"], r["id"], r["ood"]) == ("diffpath_v2", "gradients", "noise"))
    assert logged["ood/diffpath_v2/gradients/noise/auroc"] == pytest.approx(row["auroc"])
    assert any(k.startswith("plots/roc_diffpath_v2") for k in logged)


def _features(cache_dir, scorer):
    out = {}
    for meta in sorted(cache_dir.glob(f"{scorer}/*/*/meta.json")):
        with np.load(meta.parent / "features.npz") as data:
            out[meta.parent.parent.name] = (data["indices"], data["features"])
    return out


def test_one_and_two_processes_give_identical_features(smoke_checkpoint, tmp_path):
    common = [
        *SMOKE_EVAL,
        f"backbone.path={smoke_checkpoint}",
        "scorers=[{name: diffpath_v2, options: {steps: 4}}]",
        "id=[digits]",
        "ood=[digits,noise]",
        "far_pairs=[]",
        "max_eval_images=13",  # odd: the two processes get 7 and 6 images, no padding duplicates
        "batch_size=5",
        "network_batch=20",  # 20 rows per batch for diffpath_v2 (5 images × 4 steps): one call, no padding
        "logger=none",
    ]
    run_cli(*common, f"output_dir={tmp_path / 'one'}")
    run_cli(*common, f"output_dir={tmp_path / 'two'}", "trainer.devices=2", "trainer.strategy=ddp", timeout=900)
    one, two = _features(tmp_path / "one" / "feature_cache", "diffpath_v2"), _features(tmp_path / "two" / "feature_cache", "diffpath_v2")
    assert one.keys() == two.keys() == {"digits_train", "digits_test", "noise_test"}
    for key in one:
        assert np.array_equal(one[key][0], two[key][0]) and len(set(two[key][0].tolist())) == len(two[key][0])
        assert np.array_equal(one[key][1], two[key][1]), key
    assert len(two["noise_test"][0]) == 13


def test_interrupted_extraction_resumes(tmp_path, capsys):
    from helpers import extraction_setup

    from zsad.scoring.extraction import extract_features
    from zsad.scoring.feature_cache import FeatureCache, cache_key
    from zsad.scoring.scorers import image_seeds

    backbone, dataset, scorer, kw = extraction_setup()
    reference = extract_features(backbone, scorer, dataset, FeatureCache(tmp_path / "ref"), **kw)

    # An earlier run that died after finishing images 0..3: its shard is on disk, no final file.
    cache = FeatureCache(tmp_path / "resume")
    folder = cache.folder(scorer, dataset, cache_key(kw["recipe"], dataset))
    (folder / "shards").mkdir(parents=True)
    x = torch.stack([dataset[i][0] for i in range(4)])
    ids = image_seeds(0, x)
    torch.save({"index": torch.arange(4), "seed": ids, "features": scorer(backbone, x, ids)}, folder / "shards" / "part-old-r0-b000000.pt")
    resumed = extract_features(backbone, scorer, dataset, cache, log=print, **kw)
    assert "6 images, resuming: 4 already done" in capsys.readouterr().out
    assert np.array_equal(resumed.indices, reference.indices) and np.array_equal(resumed.features, reference.features)
    assert np.array_equal(resumed.seeds, reference.seeds)
    assert not (folder / "shards").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["scorers=[{name: diffpath_v3}]"], "Unknown scorer 'diffpath_v3'.*Known scorers: diffpath_v2, diffpath_6d, diffpath_1d, recon, diffpath_fused, msma"),
        (["backbone.path=/nonexistent/model.ckpt"], "Checkpoint '/nonexistent/model.ckpt' does not exist"),
        (["datasets.digits.name=cifar10", "datasets.digits.root=/nonexistent"], r"cifar10 \(train\) not found under '/nonexistent'"),
        (["id=[celeba]"], "Dataset alias 'celeba' is used in id/ood but not defined"),
        (["eval_split=train"], "fit_split and eval_split are both 'train'.*disjoint"),
        (["network_batch=64"], r"network_batch=64 pads 38% of diffpath_v2's network calls.*Set network_batch=40"),
    ],
)
def test_evaluate_user_errors(smoke_checkpoint, tmp_path, overrides, message):
    import re

    args = [*SMOKE_EVAL, f"backbone.path={smoke_checkpoint}", f"output_dir={tmp_path}", "logger=none", *overrides]
    proc = run_inprocess(*args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert re.search(message, proc.stderr, re.S), proc.stderr[-2000:]


def _image_benchmark(root: Path, n_train: int = 40, n_test: int = 16) -> None:
    """An image-folder ID set with train/ and test/ (test partly in a sub-folder), from built-in digits."""
    from PIL import Image

    from zsad.data import make_builtin

    for split, n in (("train", n_train), ("test", n_test)):
        for i, img in enumerate(make_builtin("digits", split, n)):
            path = root / split / ("batch_b" if split == "test" and i % 3 == 0 else "batch_a") / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path)


@pytest.fixture(scope="module")
def folder_benchmark(smoke_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("folder_bench")
    _image_benchmark(root / "imgs")
    out = root / "eval"
    run_cli(
        *SMOKE_EVAL, f"backbone.path={smoke_checkpoint}", f"output_dir={out}", "logger=none", "plots=false",
        f"datasets={{folder: {{name: imagefolder, root: '{root / 'imgs'}'}}, noise: {{name: noise, options: {{count: 16}}}}}}",
        "id=[folder]", "ood=[folder,noise]", "far_pairs=[]", "scorers=[{name: diffpath_v2, options: {steps: 5}}]",
    )
    return root, out


def test_score_reproduces_the_benchmark_scores_exactly(folder_benchmark, tmp_path):
    """`zsad score DIR --detector D`, no config, no backbone path: the ID-test folder gets the benchmark's scores."""
    import csv

    root, out = folder_benchmark
    test_dir = root / "imgs" / "test"
    before = sorted(p.relative_to(test_dir) for p in test_dir.rglob("*"))
    run_cli("score", str(test_dir), "--detector", str(out / "detectors" / "diffpath_v2" / "folder"), "--out", str(tmp_path / "s" / "scores.csv"), "--heatmaps")
    with open(tmp_path / "s" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    files = sorted(p.relative_to(test_dir).as_posix() for p in test_dir.rglob("*.png"))
    assert [r["file"] for r in rows] == files and len(rows) == 16
    bench = np.load(out / "scores" / "diffpath_v2" / "folder_vs_noise.npz")
    expected = dict(zip([files[i] for i in bench["id_indices"]], bench["id_scores"].tolist()))
    got = {r["file"]: float(r["anomaly_score"]) for r in rows}
    assert got == expected, "scores must equal the benchmark's per-image scores exactly"
    maps = sorted(p.relative_to(tmp_path / "s" / "heatmaps").as_posix() for p in (tmp_path / "s" / "heatmaps").rglob("*_overlay.png"))
    assert maps == sorted(f.replace(".png", "_overlay.png") for f in files), "overlays keep the sub-folder structure"
    assert all(r["p_value"] == "" and r["is_anomaly"] == "" for r in rows), "a zsad evaluate prefix has no calibration"
    assert sorted(p.relative_to(test_dir) for p in test_dir.rglob("*")) == before, "nothing written inside the input folder"


def test_score_refuses_other_weights_and_outputs_inside_the_input(folder_benchmark, smoke_checkpoint, tmp_path):
    root, out = folder_benchmark
    det = str(out / "detectors" / "diffpath_v2" / "folder")
    ckpt = torch.load(smoke_checkpoint, weights_only=True)
    key = next(k for k in ckpt["state_dict"] if k.startswith("ema.ema_model.model."))
    ckpt["state_dict"][key] = ckpt["state_dict"][key] + 1e-3
    torch.save(ckpt, tmp_path / "other.ckpt")
    proc = run_cli("score", str(root / "imgs" / "test"), "--detector", det, f"backbone.path={tmp_path / 'other.ckpt'}",
                   f"output={tmp_path / 'x.csv'}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "differs in the backbone weights (sha256)" in proc.stderr and "Pass the backbone the detector was fitted with" in proc.stderr
    proc = run_cli("score", str(root / "imgs"), "--detector", det, "--out", str(root / "imgs" / "scores.csv"), check=False)
    assert proc.returncode == 2 and "inside the input folder" in proc.stderr


def test_a_prefix_without_the_preprocessing_version_is_told_to_refit(folder_benchmark, tmp_path):
    """`zsad evaluate` records the preprocessing code's version in its recipes, so the feature cache's key and `zsad score`
    follow a change of that code; a prefix written before it recorded one is refused with what to do."""
    import shutil

    from zsad.data.transforms import PREPROCESSING_VERSION

    root, out = folder_benchmark
    prefix = out / "detectors" / "diffpath_v2" / "folder"
    recipe = json.loads(prefix.with_suffix(".recipe.json").read_text())
    assert recipe["preprocessing"]["version"] == PREPROCESSING_VERSION
    old = tmp_path / "old"
    old.mkdir()
    for f in prefix.parent.glob(prefix.name + ".*"):
        shutil.copy(f, old / f.name)
    del recipe["preprocessing"]["version"]
    (old / "folder.recipe.json").write_text(json.dumps(recipe))
    proc = run_cli("score", str(root / "imgs" / "test"), "--detector", str(old / "folder"), "--out", str(tmp_path / "x.csv"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "preprocessing" in proc.stderr and "refit" in proc.stderr, proc.stderr


def test_same_image_in_two_folders_has_identical_features(tmp_path):
    from helpers import extraction_setup
    from PIL import Image

    from zsad.config.schema import DataConfig
    from zsad.data import build_dataset, make_builtin
    from zsad.scoring.extraction import extract_features
    from zsad.scoring.feature_cache import FeatureCache
    from zsad.scoring.scorers import build_scorer

    backbone, _, scorer, kw = extraction_setup()
    imgs = make_builtin("shapes", "test", 5)
    layouts = {"a": {"x.png": 0, "y.png": 1}, "b": {"0.png": 2, "1.png": 3, "2.png": 0, "3.png": 4}}  # image 0 at two positions
    feats = {}
    for name, files in layouts.items():
        for fname, i in files.items():
            (tmp_path / name / "test").mkdir(parents=True, exist_ok=True)
            Image.fromarray(imgs[i]).save(tmp_path / name / "test" / fname)
        ds = build_dataset(OmegaConf.structured(DataConfig(name="imagefolder", root=str(tmp_path / name), split="test", image_size=16)))
        feats[name] = extract_features(backbone, scorer, ds, FeatureCache(tmp_path / "cache"), **kw)
    assert np.array_equal(feats["a"].features[0], feats["b"].features[2])
    assert feats["a"].seeds[0] == feats["b"].seeds[2] and len(set(feats["b"].seeds.tolist())) == 4
    # the Python API on the same preprocessed pixels
    x = torch.stack([build_dataset(OmegaConf.structured(DataConfig(name="imagefolder", root=str(tmp_path / "a"), split="test", image_size=16)))[0][0]])
    api = build_scorer("diffpath_v2", steps=3, network_batch=4)(backbone, x, seed=0)
    assert np.array_equal(api.numpy()[0], feats["a"].features[0])


def test_fit_test_duplicates_are_counted_and_too_many_refused():
    from types import SimpleNamespace

    from zsad.errors import DataLeakageError
    from zsad.evaluation.evaluate import check_duplicates
    from zsad.scoring.feature_cache import FeatureSet

    src = SimpleNamespace(source=SimpleNamespace(describe=lambda i: f"img{i}.png"))
    fit = FeatureSet(np.zeros((300, 2)), np.arange(300), np.arange(300) + 10_000, {})
    clean = FeatureSet(np.zeros((200, 2)), np.arange(200), np.arange(200) + 50_000, {})
    assert check_duplicates("x", src, fit, src, clean) == {"count": 0, "examples": []}
    seeds = clean.seeds.copy()
    seeds[7] = fit.seeds[42]  # 1 of 200 = 0.5%: a warning
    report = check_duplicates("x", src, fit, src, FeatureSet(clean.features, clean.indices, seeds, {}))
    assert report["count"] == 1 and report["examples"] == ["img7.png = img42.png"]
    seeds[8:11] = fit.seeds[:3]  # 4 of 200 = 2%: an error
    with pytest.raises(DataLeakageError, match="4 of 200 ID-test images.*exact duplicates.*img7.png = img42.png"):
        check_duplicates("x", src, fit, src, FeatureSet(clean.features, clean.indices, seeds, {}))


def test_ablate_writes_one_table_and_reuses_the_cache(smoke_checkpoint, tmp_path):
    """A sweep over two listed settings and a 2-value grid on the smoke benchmark; the rerun extracts nothing."""
    cfg = tmp_path / "conf" / "ablate" / "sweep.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(
        "benchmark: conf/eval/smoke.yaml\n"
        f"overrides: ['backbone.path={smoke_checkpoint}', 'id=[digits]', 'ood=[digits,noise]', 'far_pairs=[[digits, noise]]', "
        "'max_fit_images=24', 'max_eval_images=12']\n"
        "scorer: diffpath_v2\n"
        "settings:\n  - {label: default, options: {steps: 4}}\n  - {label: ssim weighting, options: {steps: 4, weighting: ssim}}\n"
        "grid: {moments: [abs, norms]}\nbase_options: {steps: 4}\n"
        f"output_dir: {tmp_path / 'out'}\ncache_dir: {tmp_path / 'cache'}\nbootstrap: 20\n"
    )
    first = run_cli("ablate", "-c", str(cfg))
    table = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert [r["setting"] for r in table["rows"]] == ["default", "ssim weighting", "moments=abs", "moments=norms"]
    assert table["pairs"] == ["digits→noise"]
    row = table["rows"][0]
    lo, hi = row["mean_all_ci"]
    assert 0 <= lo <= row["mean_all"] <= hi <= 1 and row["mean_far"] == row["digits→noise"]
    assert row["resampling"] == "per_set", "each set's images redrawn once per resample (experiments/choose_lite.py checks it)"
    assert (tmp_path / "out" / "ablation.png").is_file() and "| default |" in (tmp_path / "out" / "ablation.md").read_text()
    assert first.stdout.count("[extract]") == 4 * 3  # one extraction per setting and split (digits train, digits test, noise test)
    again = run_cli("ablate", "-c", str(cfg))
    assert "[extract]" not in again.stdout and "0 extraction(s) computed" in again.stdout


def test_ablate_rows_of_other_scorers_and_the_wandb_run(smoke_checkpoint, tmp_path):
    """A setting may name another scorer (baselines in the same table); the table goes to one W&B run,
    read back from the offline run's files."""
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(
        "benchmark: conf/eval/smoke.yaml\n"
        f"overrides: ['backbone.path={smoke_checkpoint}', 'id=[digits]', 'ood=[digits,noise]', 'far_pairs=[[digits, noise]]', "
        "'max_fit_images=24', 'max_eval_images=12']\n"
        "scorer: diffpath_v2\n"
        "settings:\n  - {label: v2, group: v2, options: {steps: 4}}\n  - {label: six, scorer: diffpath_6d, group: 6d, options: {steps: 4}}\n"
        "  - {label: six cheap, scorer: diffpath_6d, group: 6d, options: {steps: 2}}\nreference: six\n"
        f"output_dir: {tmp_path / 'out'}\ncache_dir: {tmp_path / 'cache'}\nbootstrap: 0\nlogger: {{kind: wandb}}\n"
    )
    run_cli("ablate", "-c", str(cfg))
    table = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert [(r["setting"], r["scorer"]) for r in table["rows"]] == [("v2", "diffpath_v2"), ("six", "diffpath_6d"), ("six cheap", "diffpath_6d")]
    assert [r["evaluations_per_image"] for r in table["rows"]] == [4, 4, 2] and table["reference"] == "six"
    assert table["rows"][1]["delta"] == [0.0, 0.0, 0.0], "the reference against itself"
    assert table["rows"][2]["delta"][0] == pytest.approx(table["rows"][2]["mean_far"] - table["rows"][1]["mean_far"], abs=1e-12)
    assert (tmp_path / "out" / "cost.png").is_file() and "Δ mean all [95% CI]" in (tmp_path / "out" / "ablation.md").read_text()
    six = json.loads((tmp_path / "out" / "settings" / "six" / "results.json").read_text())
    assert table["rows"][1]["digits→noise"] == next(r["auroc"] for r in six["rows"] if r["ood"] == "noise")
    runs = list((tmp_path / "out" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run = read_offline_run(runs[0])
    assert run["summary"]["ablate/six/mean_far"] == table["rows"][1]["mean_far"] and run["exit_code"] == 0
    logged = run["history"][0]
    assert logged["ablate/table"]["_type"] == "table-file" and logged["ablate/plot"]["_type"] == "image-file"
    assert logged["ablate/table"]["nrows"] == 3 and logged["ablate/cost"]["_type"] == "image-file"
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text().replace("scorer: diffpath_6d", "scorer: diffpath_9d").replace(str(tmp_path / "out"), str(tmp_path / "out2")))
    res = run_cli("ablate", "-c", str(bad), check=False)
    assert res.returncode != 0 and "diffpath_9d" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out2").exists()
