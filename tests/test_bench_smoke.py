"""The benchmark scripts run (tiny sizes, CPU): `make bench-tiles` with the fast preset, SCOPED's pass costs, the GPU
benchmark's detector row and the end-to-end detector benchmark."""

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


def test_bench_tiles_times_the_default_and_replaces_what_is_named(tmp_path):
    """Without --preset it times the default preset (half-tile stride, 5 steps); --stride and --steps replace those."""
    out = tmp_path / "tiles.json"
    _bench("bench_tiles.py", "--working-size", "48", "--out", str(out))
    report = json.loads(out.read_text())
    assert (report["preset"], report["scorer_options"], report["stride"], report["tiles"], report["evaluations_per_image"]) == (
        "default", {"steps": 5}, 16, 4, 4 * 10)
    _bench("bench_tiles.py", "--working-size", "48", "--stride", "32", "--steps", "2", "--out", str(out))
    report = json.loads(out.read_text())
    assert (report["scorer_options"], report["stride"], report["tiles"], report["evaluations_per_image"]) == ({"steps": 2}, 32, 4, 4 * 4)


def test_bench_jvp_prices_a_pass(tmp_path):
    out = tmp_path / "jvp.json"
    _bench("bench_jvp.py", "--batch", "1", "--rounds", "1", "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 6 and {r["pass"] for r in rows} >= {"forward", "forward + reverse-mode vJP"}
    assert all(r["forward_equivalents"] == 1.0 for r in rows if r["pass"] == "forward")
    # the ratios themselves are timings (one round at batch 1 on a shared CPU can invert them): `make bench` measures
    # them; here only that each pass was timed
    assert all(r["forward_equivalents"] > 0 and r["seconds_per_call"] > 0 for r in rows)


def test_bench_gpu_detector_row_runs_on_the_cpu(tmp_path):
    """The cost table's GPU row (default detector, images/s) is code that runs: here on the CPU at 48 px."""
    out = tmp_path / "gpu.json"
    _bench("bench_gpu.py", "--detector-only", "--device", "cpu", "--detector-size", "48", "--detector-images", "1", "--out", str(out))
    (row,) = json.loads(out.read_text())["detector"]
    # 48 px, 32 px tiles every 16 px: 2 × 2 tiles of 10 evaluations (the default's 5 steps); the large UNet's 4 tiles
    # get calls of 8 rows on a CPU
    assert (row["preset"], row["tiles"], row["stride"], row["evaluations_per_image"], row["network_batch"]) == ("default", 4, 16, 40, 8)
    assert row["images_per_s"] > 0 and row["seconds_per_image"] > 0


def test_bench_detector_times_fit_and_score(tmp_path):
    """bench/bench_detector.py: fit on generated normal images, score each test image alone, project the fit."""
    out = tmp_path / "detector.json"
    _bench("bench_detector.py", "--size", "32", "--normal", "14", "--test", "2", "--out", str(out))
    report = json.loads(out.read_text())
    assert (report["tiles"], report["evaluations_per_image"]) == (1, 4) and report["scored"][0].startswith("good/")
    assert not report["scored"][1].startswith("good/") and len(report["seconds"]) == 2
    assert report["median_seconds"] <= report["max_seconds"] and report["fit_images"] == 14
    assert report["projected_fit_seconds"]["300"] > report["projected_fit_seconds"]["100"] > 0


def test_bench_softmin_tiles_times_per_position_and_all_rows(tmp_path):
    """bench/bench_softmin_tiles.py: per-position references (every row while images ≤ 100, some past it) and one
    greedy step over all rows."""
    out = tmp_path / "softmin.json"
    _bench("bench_softmin_tiles.py", "--images", "5,120", "--tiles", "3", "--features", "4", "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [(r["images"], r["tile_rows"], r["references"]) for r in rows] == [(5, 15, 15), (120, 360, 300)]
    assert all(r["per_position_fit_seconds"] > 0 and r["all_rows_projected_fit_seconds"] >= 0 for r in rows)
