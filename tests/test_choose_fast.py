"""experiments/choose_fast.py applies experiments/fast_preset/RULE.md: checked on hand-made tables."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "experiments"))
from choose_fast import choose  # noqa: E402


def _table(name: str, rows: dict) -> dict:
    return {"benchmark": name, "rows": [{"setting": s, "evaluations_per_image": c, "image_auroc": list(a), "aupro": list(p)}
                                        for s, (c, a, p) in rows.items()]}


OK = (-0.005, -0.02, 0.01)


def test_the_cheapest_setting_that_holds_on_both_benchmarks_wins():
    a = _table("ad-demo-128", {"fast": (256, OK, OK), "stride=tile": (1280, OK, OK), "2 steps": (900, OK, OK)})
    b = _table("second", {"fast": (256, OK, (-0.02, -0.04, 0.0)), "stride=tile": (1280, OK, OK), "2 steps": (900, OK, OK)})
    chosen, lines = choose([a, b])
    assert chosen == "2 steps"  # fast fails the AUPRO point on the second benchmark; 900 < 1280
    assert any(line.startswith("| fast | 256 |") and line.endswith("| no |") for line in lines)


def test_the_interval_bound_and_the_point_each_can_fail():
    low = (-0.005, -0.031, 0.02)  # point fine, lower end past -0.03
    point = (-0.011, -0.02, 0.0)  # lower end fine, point past -0.01
    assert choose([_table("x", {"a": (10, low, OK)}), _table("y", {"a": (10, OK, OK)})])[0] is None
    assert choose([_table("x", {"a": (10, OK, point)}), _table("y", {"a": (10, OK, OK)})])[0] is None
    chosen, lines = choose([_table("x", {"a": (10, low, OK)})])
    assert chosen is None and lines[-1].startswith("no candidate qualifies")


def test_ties_in_cost_go_to_the_larger_worst_case_and_missing_settings_do_not_compete():
    better = (0.0, -0.01, 0.01)
    a = _table("x", {"p": (64, OK, OK), "q": (64, better, better), "only_here": (8, better, better)})
    b = _table("y", {"p": (64, OK, OK), "q": (64, better, better)})
    assert choose([a, b])[0] == "q"
