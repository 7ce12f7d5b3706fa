"""What UFCOD's soft-min kNN costs as `zsad fit`'s detector on tiles (`--detector-kind softmin_knn`), beside the
Gaussian mixture it replaces, at the size of a 256 px category: 225 tiles per image (16 px tiles of a 32 px backbone
at half-tile stride), diffpath_fused's 12 features per tile, 100 and 300 fit images.

* per position (zsad's choice): the references picked at each tile position, UFCOD's facility location on that
  position's rows (one per fit image), then the leave-one-out calibration over all positions' references; the fit
  tiles scored without their own image's references (they standardise the tile map); and the scoring of one
  image's 225 tiles;
* all rows together (UFCOD's code as it is): facility location over every tile row; one greedy step is timed on
  all rows and the fit projected as 100 such steps (the first of 100 references needs no step; each step costs the
  same N² distances);
* the Gaussian mixture: zsad fit's cross-validated grid on the same rows (`--gmm`).

The rows are Gaussian noise with the features' count: what the soft-min kNN's steps cost does not depend on their
values. The mixture's does (EM converges at once on noise), so its time here is a lower bound; bench_detector.py
times it on real tile features.

Usage: python bench/bench_softmin_tiles.py [--images 100,300] [--tiles 225] [--features 12] [--gmm] [--out outputs/bench/softmin_tiles.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def one_greedy_step_seconds(x: np.ndarray) -> float:
    """One step of facility location over every row of `x` (UFCOD's selection on all tile rows), as
    zsad.scoring.ufcod_detector.facility_location runs it past its cached size: all N² distances, in blocks."""
    from zsad.scoring.ufcod_detector import _BLOCK, SELECTION_EPS, _distance_rows

    z = (x - x.mean(axis=0)) / (x.std(axis=0) + SELECTION_EPS)
    n, d = z.shape
    nearest = _distance_rows(z, slice(0, 1))[0]
    chunk = max(1, _BLOCK // max(1, n * d))
    start = time.perf_counter()
    for lo in range(0, n, chunk):
        block = _distance_rows(z, slice(lo, min(n, lo + chunk)))
        np.sum(nearest - np.minimum(nearest, block), axis=1)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="100,300")
    parser.add_argument("--tiles", type=int, default=225)
    parser.add_argument("--features", type=int, default=12)
    parser.add_argument("--gmm", action="store_true", help="also time the Gaussian mixture's grid on the same rows")
    parser.add_argument("--out", default="outputs/bench/softmin_tiles.json")
    args = parser.parse_args()
    import torch

    from zsad.detection.model import FIT_DETECTOR
    from zsad.scoring.detector import GMMDetector, SoftMinKNNDetector

    rng = np.random.default_rng(0)
    report = {"tiles": args.tiles, "features": args.features, "threads": torch.get_num_threads(), "rows": []}
    for images in (int(n) for n in args.images.split(",")):
        x = rng.normal(size=(images * args.tiles, args.features))
        positions = np.tile(np.arange(args.tiles), images)
        det, fit_s = _timed(SoftMinKNNDetector().fit, x, groups=positions)
        images_of_rows = np.repeat(np.arange(images), args.tiles)
        _, fitted_s = _timed(det.score_fitted, x, images_of_rows)  # zsad fit scores the fit tiles too, each without its own image
        _, score_s = _timed(det.score, x[: args.tiles])
        step_s = one_greedy_step_seconds(x)
        row = {"images": images, "tile_rows": len(x), "references": len(det.references_), "per_position_fit_seconds": round(fit_s, 2),
               "score_fit_rows_seconds": round(fitted_s, 2),
               "score_one_image_seconds": round(score_s, 4), "all_rows_one_step_seconds": round(step_s, 2),
               "all_rows_projected_fit_seconds": round(100 * step_s, 1)}
        if args.gmm:
            _, row["gmm_fit_seconds"] = _timed(GMMDetector(**FIT_DETECTOR).fit, x)
            row["gmm_fit_seconds"] = round(row["gmm_fit_seconds"], 1)
        report["rows"].append(row)
        print(f"{images} images ({len(x)} tile rows): soft-min kNN per position {fit_s:.1f} s to fit ({len(det.references_)} references) "
              f"and {fitted_s:.1f} s to score the fit tiles, "
              f"{score_s * 1000:.0f} ms to score one image; facility location over all rows: {step_s:.1f} s per step, ~{100 * step_s / 60:.0f} min "
              f"projected" + (f"; Gaussian mixture grid {row['gmm_fit_seconds']:.0f} s" if args.gmm else ""), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
