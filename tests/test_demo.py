"""Issue 5: `zsad demo --quick` runs the whole pipeline offline and shows the method working."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, run_cli
from omegaconf import OmegaConf

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
    assert len(list((out / "plots").glob("roc_*.png"))) == 5 * 4 and len(list((out / "plots").glob("hist_*.png"))) == 5 * 4
    assert "| diffpath_v2 | digits | noise | far |" in proc.stdout and "demo finished in" in proc.stdout

    far = {tuple(p) for p in OmegaConf.load(REPO / "conf/eval/demo.yaml").far_pairs}
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["scorer"] for r in rows} == {"diffpath_fused", "diffpath_v2", "diffpath_6d", "recon", "ufcod"} and len(rows) == 5 * 12
    v2_far = {(r["id"], r["ood"]): r["auroc"] for r in rows if r["scorer"] == "diffpath_v2" and (r["id"], r["ood"]) in far}
    assert len(v2_far) == len(far) == 6
    assert all(a >= 0.9 for a in v2_far.values()), v2_far

    runs = [read_offline_run(p) for p in find_offline_runs(out)]
    logged = {k: v for r in runs for row in r["history"] for k, v in row.items()}
    assert logged["ood/results"]["nrows"] == 60
    assert "train/loss" in logged


def test_two_demo_runs_give_the_same_table(demo_runs):
    (a, _), (b, _) = demo_runs
    assert _table(a) == _table(b)


def test_demo_pictures_are_readable(demo_runs):
    from PIL import Image

    out, proc = demo_runs[0]
    assert Image.open(out / "samples.png").width >= 512, "sample grids are enlarged (nearest neighbour)"
    assert sorted(p.name for p in (out / "plots").glob("auroc_*.png")) == ["auroc_diffpath_6d.png", "auroc_diffpath_fused.png",
                                                                           "auroc_diffpath_v2.png", "auroc_recon.png", "auroc_ufcod.png"]
    assert "── summary" in proc.stdout and "training" in proc.stdout.split("── summary")[1]


def test_dashboard_panels_reference_keys_the_demo_logs(demo_runs, tmp_path):
    """`zsad dashboard --dry-run` builds the workspace and report with wandb-workspaces; every key a panel
    shows is one that a real (offline) zsad run logged."""
    out, _ = demo_runs[0]
    run_cli("dashboard", "--dry-run", "--project", "zsad", "-c", "conf/eval/demo.yaml", "--out", str(tmp_path))
    keys = json.loads((tmp_path / "keys.json").read_text())
    workspace, report = (tmp_path / "workspace.json").read_text(), (tmp_path / "report.json").read_text()
    runs = [read_offline_run(p) for p in find_offline_runs(out)]
    logged = {k for r in runs for row in r["history"] for k in row}
    assert len(keys) > 50 and "samples/ema" in keys and "ood/results" in keys and "plots/auroc_diffpath_v2" in keys
    missing = [k for k in keys if k not in logged]
    assert not missing, f"dashboard panels reference keys no run logged: {missing[:10]}"
    for key in keys:
        assert json.dumps(key)[1:-1] in workspace, key
    assert "ood/diffpath_6d/photos/clouds/auroc" in report and "ood/results" in report
