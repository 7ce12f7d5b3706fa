"""The benchmark scripts run (tiny sizes, CPU): `make bench-tiles` with the fast preset, and SCOPED's pass costs."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def _bench(script: str, *args: str) -> None:
    subprocess.run([sys.executable, str(REPO / "bench" / script), *args], cwd=REPO, check=True, capture_output=True, text=True, timeout=300)


def test_bench_tiles_times_the_fast_preset(tmp_path):
    out = tmp_path / "tiles.json"
    _bench("bench_tiles.py", "--working-size", "64", "--preset", "fast", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["preset"] == "fast" and report["scorer_options"] == {"steps": 2}
    assert (report["stride"], report["tiles"], report["evaluations_per_image"]) == (32, 4, 4 * 4)
    assert report["seconds"] > 0


def test_bench_jvp_prices_a_pass(tmp_path):
    out = tmp_path / "jvp.json"
    _bench("bench_jvp.py", "--batch", "1", "--rounds", "1", "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 6 and {r["pass"] for r in rows} >= {"forward", "forward + reverse-mode vJP"}
    assert all(r["forward_equivalents"] == 1.0 for r in rows if r["pass"] == "forward")
    # the ratios themselves are timings (one round at batch 1 on a shared CPU can invert them): `make bench` measures
    # them; here only that each pass was timed
    assert all(r["forward_equivalents"] > 0 and r["seconds_per_call"] > 0 for r in rows)
