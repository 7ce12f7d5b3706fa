"""A new scorer is one file (docs/extending.md): the page's example, as written, registered in this test alone,
runs through `zsad evaluate` and `zsad score` without touching the pipeline."""

from __future__ import annotations

import csv
import json
import re
import sys
import types

import numpy as np
import pytest
from conftest import REPO
from omegaconf import OmegaConf


@pytest.fixture()
def eps_energy(monkeypatch):
    """The scorer class of docs/extending.md §2, executed from the page and registered for this test only."""
    text = (REPO / "docs" / "extending.md").read_text()
    code = re.search(r"## 2\. Write it.*?```python\n(.*?)```", text, re.S).group(1)
    module = types.ModuleType("eps_energy_example")  # a real module: dataclasses resolve annotations through it
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, "docs/extending.md", "exec"), module.__dict__)
    cls = module.EpsEnergy
    from zsad.scoring import scorers

    monkeypatch.setitem(scorers.SCORERS, cls.name, cls)
    return cls


def test_a_scorer_registered_in_the_test_runs_through_evaluate_and_score(eps_energy, smoke_checkpoint, tmp_path):
    from PIL import Image

    from zsad.config import load_config
    from zsad.config.schema import EvalConfig
    from zsad.data import make_builtin
    from zsad.detection.score import score_folder
    from zsad.evaluation.evaluate import evaluate

    for split, n in (("train", 30), ("test", 12)):
        for i, img in enumerate(make_builtin("clouds", split, n)):
            (tmp_path / "imgs" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(tmp_path / "imgs" / split / f"{i:03d}.png")
    cfg = load_config(REPO / "conf" / "eval" / "smoke.yaml", [
        f"backbone.path={smoke_checkpoint}", f"output_dir={tmp_path / 'eval'}", "logger=none", "plots=false", "bootstrap=0",
        f"datasets={{folder: {{name: imagefolder, root: '{tmp_path / 'imgs'}'}}, noise: {{name: noise, options: {{count: 12}}}}}}",
        "id=[folder]", "ood=[folder,noise]", "far_pairs=[]", "scorers=[{name: eps_energy, options: {levels: 3}}]", "network_batch=12",
        "batch_size=4",
    ], EvalConfig)
    result = evaluate(OmegaConf.create(OmegaConf.to_container(cfg)))
    (row,) = result["rows"]
    assert row["scorer"] == "eps_energy" and 0 <= row["auroc"] <= 1
    recipe = json.loads((tmp_path / "eval" / "detectors" / "eps_energy" / "folder.recipe.json").read_text())
    assert recipe["scorer"] == {"name": "eps_energy", "levels": 3, "time_range": [0.05, 0.5]} and recipe["scorer_version"] == 1
    summary = score_folder(str(tmp_path / "imgs" / "test"), str(tmp_path / "eval" / "detectors" / "eps_energy" / "folder"),
                           out=str(tmp_path / "score"), heatmaps=True, device="cpu")
    with open(summary.csv) as f:
        rows = list(csv.DictReader(f))
    with np.load(tmp_path / "eval" / "scores" / "eps_energy" / "folder_vs_noise.npz") as d:
        expected = dict(zip(d["id_indices"].tolist(), d["id_scores"].tolist()))
    assert [float(r["anomaly_score"]) for r in rows] == [expected[i] for i in range(12)], "the benchmark's scores, exactly"
    assert list(rows[0])[4:] == ["eps_energy@0", "eps_energy@1", "eps_energy@2"]
    assert len(list((tmp_path / "score" / "heatmaps").glob("*_overlay.png"))) == 12, "its maps become overlays"
