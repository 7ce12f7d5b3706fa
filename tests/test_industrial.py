"""`zsad test` on labelled data (docs/method.md §7): a small version of `make ad-demo`, a tiny folder with MVTec
AD's real directory names, the folder layout, a fitted detector; numbers checked against independent code."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, run_inprocess
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from zsad.utils.wandb_offline import find_offline_runs, read_offline_run

FAST = ["--working-size", "32", "--tile-stride", "16", "--device", "cpu", "--batch-size", "20"]


@pytest.fixture(scope="module")
def ad_demo(trained_checkpoint, tmp_path_factory):
    """The ad-demo data at 32 px, two categories (a texture and the object), then `zsad test` with baselines."""
    from zsad.data.defects import make_defect_benchmark

    root = tmp_path_factory.mktemp("ad")
    make_defect_benchmark(root / "data", categories=["grass", "coins"], size=32, n_train=30, n_test_good=8, n_test_defect_per_family=3, seed=0)
    proc = run_cli("test", "--data", f"mvtec:{root / 'data'}", "--backbone", str(trained_checkpoint), "-o", str(root / "out"), *FAST,
                   "--cache-dir", str(root / "cache"))
    return root, proc


def _scores(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return np.array([float(r["anomaly_score"]) for r in rows]), np.array([int(r["label"]) for r in rows]), [r["is_anomaly"] for r in rows]


def f1_max_slow(scores: np.ndarray, labels: np.ndarray) -> float:
    best = 0.0
    for t in np.unique(scores):
        flagged = scores >= t
        tp = int((flagged & (labels == 1)).sum())
        if tp:
            precision, recall = tp / flagged.sum(), tp / (labels == 1).sum()
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def test_ad_demo_writes_the_table_overlays_and_a_wandb_run(ad_demo):
    root, proc = ad_demo
    out = root / "out"
    for name in ("results.md", "results.csv", "results.json"):
        assert (out / name).is_file(), name
    result = json.loads((out / "results.json").read_text())
    methods = {r["method"] for r in result["rows"]}
    assert methods == {"diffpath_fused", "diffpath_fused [map: tile]", "diffpath_fused [score: top_k]", "pixel_gaussian", "nearest_ssim"}
    assert {r["category"] for r in result["rows"]} == {"grass", "coins"}
    for r in result["rows"]:
        for key in ("image_auroc", "pixel_auroc", "aupro"):
            assert 0 <= r[key] <= 1, (r["method"], key)
        assert r["n_good"] == 8 and r["n_defect"] == 12
    fused = next(r for r in result["rows"] if r["method"] == "diffpath_fused" and r["category"] == "grass")
    assert fused["evaluations_per_image"] == 4 * 10 and fused["false_alarm"]["n"] == 8 and fused["detection"]["n"] == 12
    md = (out / "results.md").read_text()
    assert "| **mean** | **diffpath_fused** |" in md and "AUPRO" in md and "Clopper–Pearson" in md
    assert (out / "detectors" / "grass" / "diffpath_fused" / "recipe.json").is_file(), "every fitted detector is kept, with its recipe"
    assert (out / "overlays" / "coins_diffpath_fused.png").is_file() and list((out / "overlays" / "coins" / "diffpath_fused").glob("best_hit_*.png"))
    runs = [read_offline_run(p) for p in find_offline_runs(out)]
    logged = {k for r in runs for row in r["history"] for k in row}
    assert "test/results" in logged and "test/overlays/coins" in logged and "test/grass/diffpath_fused/aupro" in logged
    assert "[test] coins" in proc.stdout and "[fit]" in proc.stdout


def test_image_metrics_and_rates_equal_independent_code(ad_demo):
    root, _ = ad_demo
    result = json.loads((root / "out" / "results.json").read_text())
    for r in result["rows"]:
        scores, labels, flags = _scores(root / "out" / "scores" / r["category"] / f"{r['method'].replace(' ', '_')}.csv")
        assert r["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        assert r["image_aupr"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
        assert r["image_f1_max"] == pytest.approx(f1_max_slow(scores, labels), abs=1e-12)
        if r["false_alarm"] is not None:
            flagged = np.array([f == "true" for f in flags])
            assert r["false_alarm"]["k"] == int(flagged[labels == 0].sum()) and r["detection"]["k"] == int(flagged[labels == 1].sum())


def test_pixel_metrics_equal_the_exact_computation(ad_demo, trained_checkpoint):
    """The table's binned pixel metrics against the exact ones, from the same detector's maps."""
    import torch

    from zsad import AnomalyDetector
    from zsad.data.layouts import load_mask, read_mvtec
    from zsad.detection.inputs import Images
    from zsad.detection.maps import upsample
    from zsad.evaluation.ad_metrics import pixel_metrics_exact
    from zsad.evaluation.industrial import _train_images

    root, _ = ad_demo
    (labelled,) = read_mvtec(root / "data", "grass")
    det = AnomalyDetector.fit(_train_images(labelled), backbone=str(trained_checkpoint), working_size=32, tile_stride=16, device="cpu",
                              cache_dir=root / "cache", batch_size=20, require_rate=False)
    from zsad.data.base import FileSource

    images = Images(FileSource([i.path for i in labelled.test]), [i.name for i in labelled.test], None, "grass")
    maps = [upsample(torch.from_numpy(r.map), (32, 32)) for r in det.iter_scores(images, batch_size=20)]
    exact = pixel_metrics_exact(maps, [load_mask(i) for i in labelled.test])
    row = next(r for r in json.loads((root / "out" / "results.json").read_text())["rows"] if r["method"] == "diffpath_fused" and r["category"] == "grass")
    for key in ("pixel_auroc", "pixel_aupr", "aupro"):
        assert row[key] == pytest.approx(exact[key], abs=1e-3), key


def test_real_mvtec_names_folder_layout_and_a_fitted_detector(trained_checkpoint, tmp_path):
    """A tiny tree with MVTec AD's real directory names (masks at another size: resized, counted), the Folder
    layout without masks (image metrics only), and `--detector` with a folder written by `zsad fit`."""
    from zsad.data import make_builtin

    cat = tmp_path / "mvtec" / "bottle"
    good, bad = make_builtin("clouds", "train", 36), make_builtin("noise", "test", 4)
    for i, a in enumerate(good[:28]):
        (cat / "train" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(cat / "train" / "good" / f"{i:03d}.png")
    for i, a in enumerate(good[28:]):
        (cat / "test" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(cat / "test" / "good" / f"{i:03d}.png")
    for i, a in enumerate(bad):
        (cat / "test" / "broken_large").mkdir(parents=True, exist_ok=True)
        (cat / "ground_truth" / "broken_large").mkdir(parents=True, exist_ok=True)
        img = a.copy()
        img[:16] = good[i][:16]  # the top half normal, the bottom half broken
        Image.fromarray(img).save(cat / "test" / "broken_large" / f"{i:03d}.png")
        mask = np.zeros((64, 64), np.uint8)
        mask[32:] = 255
        Image.fromarray(mask).save(cat / "ground_truth" / "broken_large" / f"{i:03d}_mask.png")  # 64 px masks of 32 px images
    run_ok("test", "--data", f"mvtec:{tmp_path / 'mvtec'}", "--backbone", str(trained_checkpoint), "-o", str(tmp_path / "o1"), *FAST,
                   "--no-baselines", "--logger", "none", "--cache-dir", str(tmp_path / "cache"))
    row = json.loads((tmp_path / "o1" / "results.json").read_text())["rows"][0]
    assert row["category"] == "bottle" and row["image_auroc"] > 0.9 and row["pixel_auroc"] is not None
    assert "4 mask(s) differ in size from their image" in (tmp_path / "o1" / "results.md").read_text()
    # Folder layout without masks
    normal, abnormal = tmp_path / "f" / "normal", tmp_path / "f" / "abnormal"
    shutil.copytree(cat / "train" / "good", normal)
    shutil.copytree(cat / "test" / "broken_large", abnormal)
    run_ok("test", "--data", f"folder:{normal},{abnormal}", "--backbone", str(trained_checkpoint), "-o", str(tmp_path / "o2"), *FAST,
            "--no-baselines", "--logger", "none", "--cache-dir", str(tmp_path / "cache"), "--false-alarm-rate", "0.2")
    row = json.loads((tmp_path / "o2" / "results.json").read_text())["rows"][0]
    assert row["pixel_auroc"] is None and row["image_auroc"] is not None and row["n_good"] >= 1
    # a detector fitted by `zsad fit`, tested as it is
    run_ok("fit", str(cat / "train" / "good"), "-o", str(tmp_path / "det"), "--backbone", str(trained_checkpoint), "--working-size", "32",
            "--tile-stride", "16", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--false-alarm-rate", "0.2")
    run_ok("test", "--data", f"mvtec:{cat}", "--detector", str(tmp_path / "det"), "-o", str(tmp_path / "o3"), "--device", "cpu", "--logger", "none")
    rows = json.loads((tmp_path / "o3" / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["diffpath_fused"] and rows[0]["false_alarm"]["n"] == 8
    assert rows[0]["alpha"] == 0.2 and "α=0.2 " in (tmp_path / "o3" / "results.md").read_text(), "decided and labelled at the detector's own α"
    scores = _scores(tmp_path / "o3" / "scores" / "bottle" / "diffpath_fused.csv")
    cal = np.load(tmp_path / "det" / "calibration.npz")["scores"]
    from zsad.detection.conformal import is_anomaly

    assert [f == "true" for f in scores[2]] == list(is_anomaly(cal, scores[0], 0.2))
    run_ok("test", "--data", f"mvtec:{cat}", "--detector", str(tmp_path / "det"), "-o", str(tmp_path / "o4"), "--device", "cpu", "--logger", "none",
           "--false-alarm-rate", "0.3")
    row = json.loads((tmp_path / "o4" / "results.json").read_text())["rows"][0]
    assert row["alpha"] == 0.3 and "α=0.3 " in (tmp_path / "o4" / "results.md").read_text(), "an explicit rate decides and labels the rows"


def run_ok(*args: str):
    """A command in this process (no interpreter start-up), which must succeed."""
    proc = run_inprocess(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_bad_labelled_data_is_named(tmp_path, trained_checkpoint):
    cat = tmp_path / "m" / "screw"
    (cat / "train" / "good").mkdir(parents=True)
    (cat / "test" / "scratch").mkdir(parents=True)
    (cat / "ground_truth" / "scratch").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(cat / "train" / "good" / "000.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(cat / "test" / "scratch" / "000.png")
    proc = run_inprocess("test", "--data", f"mvtec:{tmp_path / 'm'}", "--backbone", str(trained_checkpoint), "-o", str(tmp_path / "o"))
    assert proc.returncode == 2 and re.search(r"000\.png.*mask", proc.stderr) and "Traceback" not in proc.stderr, proc.stderr
    proc = run_inprocess("test", "--data", f"mvtec:{tmp_path / 'm'}/bolt", "--backbone", str(trained_checkpoint), "-o", str(tmp_path / "o"))
    assert proc.returncode == 2 and "screw" in proc.stderr, proc.stderr
    proc = run_inprocess("test", "--data", "zip:/x", "--backbone", str(trained_checkpoint), "-o", str(tmp_path / "o"))
    assert proc.returncode == 2 and "mvtec:" in proc.stderr and "folder:" in proc.stderr
    assert not (tmp_path / "o").exists()
