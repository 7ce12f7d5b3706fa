"""The `lite` rule of experiments/choose_lite.py on hand-made ablation tables: the cheapest setting within half the
default's cost whose Δ holds on every benchmark, and nothing when none does."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def choose_lite():
    spec = importlib.util.spec_from_file_location("choose_lite", REPO / "experiments" / "choose_lite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table(folder: Path, rows: dict[str, tuple[int, tuple[float, float, float]]], resampling: str | None = "per_set") -> str:
    """rows: label -> (evaluations per image, (Δ, lower, upper)); the reference row is 'default' at 20. `resampling`
    as `zsad ablate` records it (None: a table from before per-set resampling)."""
    folder.mkdir(parents=True)
    entries = [{"setting": "default", "scorer": "diffpath_fused", "options": {}, "evaluations_per_image": 20, "delta": [0.0, 0.0, 0.0],
                **({"resampling": resampling} if resampling else {})}]
    entries += [{"setting": k, "scorer": "s", "options": {"steps": c}, "evaluations_per_image": c, "delta": list(d)} for k, (c, d) in rows.items()]
    (folder / "ablation.json").write_text(json.dumps({"reference": "default", "rows": entries}))
    return str(folder)


def _decision(choose_lite, capsys, *folders: str) -> str:
    assert choose_lite.main(list(folders)) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_the_cheapest_setting_that_holds_on_every_benchmark_is_chosen(choose_lite, tmp_path, capsys):
    a = _table(tmp_path / "a", {"cheap": (4, (-0.004, -0.009, 0.0)), "cheaper_but_bad_on_b": (2, (0.0, -0.001, 0.0)),
                                "fine": (8, (0.0, -0.002, 0.002)), "over_budget": (12, (0.01, 0.0, 0.02))})
    b = _table(tmp_path / "b", {"cheap": (4, (-0.005, -0.010, 0.0)), "cheaper_but_bad_on_b": (2, (-0.006, -0.008, 0.0)),
                                "fine": (8, (0.0, -0.002, 0.002)), "over_budget": (12, (0.01, 0.0, 0.02))})
    line = _decision(choose_lite, capsys, a, b)
    assert line.startswith("lite = cheap:") and "4 network evaluations per image (budget 10)" in line, line
    assert "worst Δ over the benchmarks -0.0050" in line  # the bounds are inclusive: −0.005 and −0.01 pass


@pytest.mark.parametrize("failing", [(-0.0051, -0.009, 0.0), (-0.004, -0.0101, 0.0)], ids=["point", "lower_bound"])
def test_a_setting_past_either_bound_or_the_budget_gives_no_preset(choose_lite, tmp_path, capsys, failing):
    a = _table(tmp_path / "a", {"near_miss": (6, failing), "over_budget": (11, (0.0, 0.0, 0.0))})
    line = _decision(choose_lite, capsys, a)
    assert "no lite preset ships" in line and "at most 10 network evaluations" in line, line


def test_a_table_from_before_per_set_resampling_is_named(choose_lite, tmp_path, capsys):
    """Intervals that resampled each pair on its own are too narrow: such a table is named on the first line."""
    old = _table(tmp_path / "old", {"cheap": (4, (-0.004, -0.009, 0.0))}, resampling=None)
    new = _table(tmp_path / "new", {"cheap": (4, (-0.004, -0.009, 0.0))})
    assert choose_lite.main([old, new]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("warning: old: intervals from before per-set resampling") and "new" not in out[0]
    assert choose_lite.main([new]) == 0
    assert "warning" not in capsys.readouterr().out
