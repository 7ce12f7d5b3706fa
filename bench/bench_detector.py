"""End-to-end cost of zsad's detector on real-looking images: `AnomalyDetector.fit` on normal images, then
`AnomalyDetector.score` on each test image alone (normal and defective), as a user calls them, with the code's own
tiling for the preset. Images come from the ad-demo generator (zsad.data.defects, package photographs) at the
working size; the network is DiffPath's CelebA-32 UNet with random weights (no preset here looks closer at some
tiles than others, so the cost does not depend on what the weights are).

Reports the fit time, the median and maximum seconds per scored image, and fit times for 100 and 300 normal images
projected from the measured fit: extraction per image × N, plus the detector's own fit timed on N images' worth of
tile rows (the measured rows resampled with a small jitter, since only a few images were extracted).

Usage: python bench/bench_detector.py [--preset fast] [--size 256] [--normal 12] [--test 10] [--category brick] [--out …]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from random_backbone import random_celeba32_backbone


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _projected_fit(det, rows: np.ndarray, kind: str, per_image: float, n: int) -> float:
    """Seconds to fit on `n` normal images at the default 5% rate: each image extracted once (fit or calibration part),
    and the detector fitted on the fit part's rows, here resampled from the measured ones with a jitter of 1e-3 of each
    column's spread (an approximation: the mixture's cross-validation sees near-copies in its folds)."""
    from zsad.detection.split import split_normal

    rng = np.random.default_rng(0)
    tiles = det.tiling.count
    n_fit = len(split_normal([f"{i:05d}.png" for i in range(n)], 0.05, None, tiles).fit)
    sample = rows[rng.integers(0, len(rows), n_fit * tiles)]
    sample = sample + rng.normal(0, 1e-3, sample.shape) * rows.std(0, keepdims=True)
    start = time.perf_counter()
    det._fit_density(sample, kind)
    return n * per_image + time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--normal", type=int, default=12)
    parser.add_argument("--test", type=int, default=10, help="scored one at a time, half normal, half defective")
    parser.add_argument("--category", default="brick")
    parser.add_argument("--out", default="outputs/bench/detector.json")
    args = parser.parse_args()
    import torch

    from zsad import AnomalyDetector
    from zsad.data.defects import FAMILIES, make_defect_benchmark

    backbone = random_celeba32_backbone()
    with tempfile.TemporaryDirectory(prefix="zsad-bench-detector-") as tmp:
        n_good = args.test // 2
        per_family = -(-(args.test - n_good) // len(FAMILIES))
        make_defect_benchmark(tmp, [args.category], size=args.size, n_train=args.normal, n_test_good=max(n_good, 1),
                              n_test_defect_per_family=max(per_family, 1))
        folder = Path(tmp) / args.category
        good = sorted((folder / "test" / "good").glob("*.png"))[:n_good]
        defective = sorted(p for d in sorted((folder / "test").iterdir()) if d.name != "good" for p in sorted(d.glob("*.png")))
        tests = good + defective[: args.test - len(good)]
        captured: dict = {}  # the fit part's tile rows, for the projection (the detector does not keep them)
        fit_density = AnomalyDetector._fit_density

        def timed_fit_density(self, rows, kind):
            start = time.perf_counter()
            fit_density(self, rows, kind)
            captured.update(rows=rows, kind=kind, seconds=time.perf_counter() - start)

        AnomalyDetector._fit_density = timed_fit_density
        start = time.perf_counter()
        # a few normal images cannot hold a 5% rate; the cost per image, which α does not change, is what is measured here
        det = AnomalyDetector.fit(folder / "train" / "good", backbone=backbone, preset=args.preset, false_alarm_rate=0.5,
                                  require_rate=False, device="cpu")
        fit_seconds = time.perf_counter() - start
        AnomalyDetector._fit_density = fit_density
        seconds = []
        for path in tests:
            start = time.perf_counter()
            det.score([path])
            seconds.append(time.perf_counter() - start)
            print(f"{path.parent.name}/{path.name}: {seconds[-1]:.1f} s", flush=True)
        n_normal = det.info["n_normal"]
    per_image = (fit_seconds - captured["seconds"]) / n_normal  # extraction (and setup) per image, the mixture's fit apart
    report = {
        "preset": args.preset, "size": args.size, "category": args.category, "threads": torch.get_num_threads(), "cpu": _cpu_name(),
        "torch": torch.__version__, "evaluations_per_image": det.network_evaluations_per_image(), "tiles": det.tiling.count,
        "tile_stride": det.tiling.stride, "scored": [p.parent.name + "/" + p.name for p in tests], "seconds": seconds,
        "median_seconds": statistics.median(seconds), "max_seconds": max(seconds), "fit_images": n_normal,
        "fit_seconds": fit_seconds,
        "projected_fit_seconds": {n: _projected_fit(det, captured["rows"], captured["kind"], per_image, n) for n in (100, 300)},
    }
    print(f"{args.preset}: {report['tiles']} tiles, {report['evaluations_per_image']} network evaluations per {args.size} px image on "
          f"{report['threads']} threads ({report['cpu']}): median {report['median_seconds']:.1f} s, max {report['max_seconds']:.1f} s "
          f"over {len(seconds)} images; fit on {n_normal} images {fit_seconds:.0f} s; projected fit on 100 / 300 images: "
          + " / ".join(f"{s / 60:.0f} min" for s in report["projected_fit_seconds"].values()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
