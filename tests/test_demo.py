"""Issue 5: `zsad demo --quick` runs the whole pipeline offline and shows the method working."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from conftest import REPO, run_cli
from zsad.utils.wandb_offline import find_offline_runs, read_offline_run


def _table(out):
    rows = json.loads((out / "results.json").read_text())
    return [{k: v for k, v in r.items()} for r in rows["rows"] + rows["means"]]


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    outs = []
    for i in range(2):
        out = tmp_path_factory.mktemp(f"demo{i}")
        proc = run_cli("demo", "--quick", "--output-dir", str(out), timeout=600)
        outs.append((out, proc))
    return outs


def test_demo_outputs_and_far_pairs(demo_runs):
    out, proc = demo_runs[0]
    for name in ("results.md", "results.csv", "results.json", "samples.png", "train/checkpoints/last.ckpt", "train/config.yaml"):
        assert (out / name).is_file(), name
    assert len(list((out / "plots").glob("roc_*.png"))) == 3 * 4 and len(list((out / "plots").glob("hist_*.png"))) == 3 * 4
    assert "| diffpath_v2 | digits | noise | far |" in proc.stdout and "demo finished in" in proc.stdout

    far = {tuple(p) for p in OmegaConf.load(REPO / "conf/eval/demo.yaml").far_pairs}
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["scorer"] for r in rows} == {"diffpath_v2", "diffpath_6d", "recon"} and len(rows) == 3 * 12
    v2_far = {(r["id"], r["ood"]): r["auroc"] for r in rows if r["scorer"] == "diffpath_v2" and (r["id"], r["ood"]) in far}
    assert len(v2_far) == len(far) == 6
    assert all(a >= 0.9 for a in v2_far.values()), v2_far

    runs = [read_offline_run(p) for p in find_offline_runs(out)]
    logged = {k: v for r in runs for row in r["history"] for k, v in row.items()}
    assert logged["ood/results"]["nrows"] == 36
    assert "train/loss" in logged


def test_two_demo_runs_give_the_same_table(demo_runs):
    (a, _), (b, _) = demo_runs
    assert _table(a) == _table(b)
