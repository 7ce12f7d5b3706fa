"""`make bench`: CPU speed of every scorer on a DiffPath CelebA-32-sized model (random weights), before
(plain kernels) and after (the fast path: fused attention, channels-last), the share of time spent
outside network calls, padding, peak memory; and GMM model selection time on 50,000 × 6 features,
DiffPath's full grid against zsad's default (grid on a 10,000 subsample, parallel folds, refit on all).

Each measurement runs in a fresh process so peak RSS belongs to that run alone.
Also zsad's default detector (diffpath_fused): images/s and network evaluations per image at 32 px.
Usage: python bench/bench_scorers.py [--images 32] [--batch 16] [--baseline] [--bf16] [--scorers ...] [--skip-grid] [--default-rounds 3]
       [--out outputs/bench/results.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import time

from random_backbone import random_celeba32_backbone

SCORERS = {
    "diffpath_v2": {"steps": 10},
    "diffpath_6d": {"steps": 10},
    "diffpath_1d": {"steps": 10},
    "recon": {"levels": [0.1, 0.25, 0.4], "steps": 10},
}


def _scorer_worker(name: str, options: dict, images: int, batch: int, network_batch: int, fast: bool, bf16: bool, queue) -> None:
    import contextlib

    import torch

    import zsad
    from zsad.scoring.scorers import padding_share

    backbone = random_celeba32_backbone(fast)
    calls = {"t": 0.0, "n": 0}
    inner = backbone.predict_eps

    def timed(x, t):
        start = time.perf_counter()
        out = inner(x, t)
        calls["t"] += time.perf_counter() - start
        calls["n"] += len(x)
        return out

    backbone.predict_eps = timed
    scorer = zsad.build_scorer(name, network_batch=network_batch, **options)
    x = torch.rand(images, 3, 32, 32) * 2 - 1
    # bf16: what trainer.precision=bf16-mixed does on the CPU (autocast around every network call)
    precision = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with precision:
        scorer(backbone, x[:2], seed=0)  # warm-up
        calls.update(t=0.0, n=0)
        start = time.perf_counter()
        for i in range(0, images, batch):
            scorer(backbone, x[i : i + batch], seed=0)
    total = time.perf_counter() - start
    queue.put({
        "scorer": name, "path": ("fast" if fast else "plain") + ("+bf16" if bf16 else ""), "options": options, "images": images, "images_per_s": images / total,
        "network_rows_per_image": calls["n"] / images, "outside_network_share": 1 - calls["t"] / total,
        "padding_share": padding_share(scorer.rows_per_call(batch), network_batch),  # zero rows in a full batch's calls
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    })


GMM_VARIANTS = {
    "fast": dict(mode="fast"),
    "grid (zsad default: 10k subsample, parallel folds)": dict(mode="grid"),
    "grid (DiffPath: all samples, one core)": dict(mode="grid", grid_max_samples=None, n_jobs=1),
}


def _gmm_worker(label: str, n: int, queue) -> None:
    import numpy as np

    from zsad.evaluation.metrics import auroc
    from zsad.scoring.detector import GMMDetector

    rng = np.random.default_rng(0)
    centers = rng.normal(0, 4, (20, 6))
    x = centers[rng.integers(0, 20, n)] + rng.normal(0, 1, (n, 6))
    held_out = centers[rng.integers(0, 20, 5000)] + rng.normal(0, 1, (5000, 6))
    shifted = centers[rng.integers(0, 20, 5000)] + rng.normal(0, 1, (5000, 6)) * 1.3  # a near shift: wider clusters
    start = time.perf_counter()
    det = GMMDetector(**GMM_VARIANTS[label]).fit(x)
    fit_s = time.perf_counter() - start
    queue.put({"variant": label, "n": n, "fit_s": fit_s, "best_params": det.best_params_, "auroc_near_shift": auroc(det.score(held_out), det.score(shifted))})


def _default_worker(images: int, batch: int, network_batch: int, rounds: int, queue) -> None:
    """zsad's default detector (the recommended scorer, its defaults) at 32 px: images/s (median over rounds) and
    network evaluations per image. No `lite` preset ships (docs/speed.md says why), so it stands alone."""
    import statistics

    import torch

    import zsad
    from zsad.scoring.scorers import RECOMMENDED_SCORER

    backbone = random_celeba32_backbone()
    scorer = zsad.build_scorer(RECOMMENDED_SCORER, network_batch=network_batch)
    x = torch.rand(images, 3, 32, 32) * 2 - 1
    scorer(backbone, x[:batch], seed=0)  # warm-up at full size
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(0, images, batch):
            scorer(backbone, x[i : i + batch], seed=0)
        rates.append(images / (time.perf_counter() - start))
    queue.put({"scorer": scorer.options(), "evaluations_per_image": scorer.network_evaluations_per_image(backbone.num_timesteps),
               "images_per_s": statistics.median(rates), "rounds": rates})


def _run(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--network-batch", type=int, default=8)
    parser.add_argument("--gmm-samples", type=int, default=50_000)
    parser.add_argument("--skip-grid", action="store_true", help="skip DiffPath's full-data grid (about 5 minutes)")
    parser.add_argument("--baseline", action="store_true", help="also run every scorer on the plain kernels (before/after)")
    parser.add_argument("--bf16", action="store_true", help="also run the fast path in bf16 autocast (trainer.precision=bf16-mixed; not fixture-exact)")
    parser.add_argument("--scorers", nargs="*", default=list(SCORERS), choices=list(SCORERS), help="scorers to run (default: all)")
    parser.add_argument("--default-rounds", type=int, default=3, help="rounds of zsad's default detector (0 skips it)")
    parser.add_argument("--out", default="outputs/bench/results.json")
    args = parser.parse_args()
    import torch

    report = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}", "scorers": [],
              "gmm": []}
    print(f"# zsad bench on {report['machine']}: DiffPath CelebA-32-size UNet (52.5M parameters, random weights), 32×32")
    print(f"{'scorer':<12} {'path':<9} {'img/s':>8} {'speed-up':>9} {'net rows/img':>13} {'padding':>8} {'outside net':>12} {'peak RSS':>10}")
    for name, options in SCORERS.items():
        if name not in args.scorers:
            continue
        plain = None
        paths = [(False, False), (True, False)] if args.baseline or name == "diffpath_6d" else [(True, False)]
        for fast, bf16 in paths + ([(True, True)] if args.bf16 else []):
            r = _run(_scorer_worker, name, options, args.images, args.batch, args.network_batch, fast, bf16)
            report["scorers"].append(r)
            plain = r if not fast else plain
            ratio = f"{r['images_per_s'] / plain['images_per_s']:8.2f}×" if fast and plain else ""
            print(f"{name:<12} {r['path']:<9} {r['images_per_s']:8.2f} {ratio:>9} {r['network_rows_per_image']:13.1f} {100 * r['padding_share']:7.1f}% "
                  f"{100 * r['outside_network_share']:11.1f}% {r['peak_rss_mib']:8.0f} MiB", flush=True)
    if args.default_rounds:
        r = _run(_default_worker, args.images, args.batch, args.network_batch, args.default_rounds)
        report["default"] = r
        print(f"default  {r['scorer']['name']} ({r['evaluations_per_image']} network evaluations/image): {r['images_per_s']:.2f} images/s "
              "(median of rounds); no lite preset ships (docs/speed.md says why)", flush=True)
    for label in GMM_VARIANTS:
        if args.skip_grid and "DiffPath" in label:
            continue
        r = _run(_gmm_worker, label, args.gmm_samples)
        report["gmm"].append(r)
        print(f"GMM {label:<52} on {args.gmm_samples} × 6: {r['fit_s']:6.1f} s  AUROC (near shift) {r['auroc_near_shift']:.4f}  {r['best_params']}", flush=True)
    from pathlib import Path

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
