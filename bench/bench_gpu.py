"""`make bench-gpu`: network evaluations/s of the DiffPath CelebA-32 UNet (random weights, 32 px) on one
GPU for batch sizes 256–2048 in fp32, TF32 and bf16, eager and compiled, with peak memory; then the
whole extraction pipeline (data loading, seeds, scorer maths, cache writes) in images/s on generated
images, against the bare network rate; then the row of docs/speed.md's cost table: zsad's default detector
(diffpath_fused over 32 px tiles every 16 px) on 256 px images, in images/s. Runs offline in a few minutes; writes
outputs/bench/results_gpu.json.

`--detector-only --device cpu --detector-size 64` runs only the detector row on the CPU at a tiny size (the smoke
test does, so the GPU code path is not unrun code).

Usage: python bench/bench_gpu.py [--batches 256,512,1024,2048] [--no-compile] [--seconds 3] [--detector-only]
       [--device cuda] [--detector-size 256] [--detector-images 32] [--preset default] [--out …]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from random_backbone import random_celeba32_backbone

PRECISIONS = {"fp32": (torch.float32, False), "tf32": (torch.float32, True), "bf16": (torch.bfloat16, False)}


def _backbone(compile_mode: str | None, device: str = "cuda"):
    backbone = random_celeba32_backbone(device=device)
    if compile_mode:
        backbone.unet = torch.compile(backbone.unet, mode=compile_mode, dynamic=False)
    return backbone


def network_rate(backbone, batch: int, precision: str, seconds: float) -> dict:
    """Network evaluations/s of predict_eps at one batch size and precision (after warm-up)."""
    dtype, tf32 = PRECISIONS[precision]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    x = torch.randn(batch, 3, 32, 32, device="cuda")
    t = torch.randint(0, 4000, (batch,), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        for _ in range(3):  # warm-up (and compilation)
            backbone.predict_eps(x, t)
        torch.cuda.synchronize()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            backbone.predict_eps(x, t)
            n += batch
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"batch": batch, "precision": precision, "evals_per_s": n / elapsed, "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}


def pipeline_rate(precision: str, images: int, batch: int, scorer_name: str = "diffpath_6d", options: dict | None = None) -> dict:
    """`zsad evaluate`'s extraction (Lightning predict, loader, seeds, scorer, shard writes) on generated images."""
    import numpy as np

    from zsad.data.base import ArraySource, ImageDataset
    from zsad.data.transforms import build_transform
    from zsad.scoring.extraction import extract_features
    from zsad.scoring.feature_cache import FeatureCache
    from zsad.scoring.recipe import recipe_for
    from zsad.scoring.scorers import build_scorer

    arr = np.random.default_rng(0).integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    dataset = ImageDataset("generated", "test", ArraySource(arr, "generated"), build_transform(32), {"image_size": 32})
    backbone = _backbone(None)
    scorer = build_scorer(scorer_name, network_batch=batch, **(options if options is not None else {"steps": 10}))
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    lightning_precision = {"fp32": "32-true", "tf32": "32-true", "bf16": "bf16-mixed"}[precision]
    with tempfile.TemporaryDirectory() as cache:
        recipe = recipe_for(scorer, backbone, dataset.spec, 0, "cuda", lightning_precision, tf32=precision == "tf32")
        kw = dict(recipe=recipe, trainer_kwargs=dict(accelerator="gpu", devices=1, precision=lightning_precision), batch_size=batch, num_workers=8)
        start = time.perf_counter()
        extract_features(backbone, scorer, dataset, FeatureCache(cache), **kw)
        elapsed = time.perf_counter() - start
    per_image = scorer.network_evaluations_per_image(backbone.num_timesteps)
    return {"precision": precision, "images": images, "batch": batch, "scorer": scorer.options(), "evaluations_per_image": per_image,
            "images_per_s": images / elapsed, "evals_per_s": images * per_image / elapsed}


def detector_rate(device: str, size: int, images: int, preset: str = "default", precision: str = "fp32") -> dict:
    """Images/s of zsad's default detector (or a preset's) on `size` px images: the tiled scorer with the tiling and
    network call size `zsad fit` gives it on this device, features and maps from one pass, on images already in memory
    (the network and the scorer's maths: no decoding, density scoring or map upsampling, which `zsad score` adds)."""
    from zsad.detection.model import detector_scorer

    backbone = _backbone(None, device)
    scorer = detector_scorer(backbone, (size, size), torch.device(device), preset=preset)  # as `zsad fit` builds it
    tiling = scorer.tiling
    dtype, tf32 = PRECISIONS[precision]
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    x = torch.rand(images, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32):
        scorer(backbone, x[:1], with_maps=True)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        scorer(backbone, x, with_maps=True)
        if device == "cuda":
            torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"device": device, "precision": precision, "preset": preset, "size": size, "images": images, "tiles": tiling.count,
            "stride": tiling.stride, "network_batch": scorer.network_batch_for(device),
            "evaluations_per_image": scorer.network_evaluations_per_image(backbone.num_timesteps),
            "images_per_s": images / elapsed, "seconds_per_image": elapsed / images}


def _say_detector(r: dict) -> None:
    print(f"detector {r['preset']} {r['size']} px ({r['tiles']} tiles, {r['evaluations_per_image']} evaluations/image) {r['device']} "
          f"{r['precision']}: {r['images_per_s']:.3g} images/s = {r['seconds_per_image']:.3g} s per image", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", default="256,512,1024,2048")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--pipeline-images", type=int, default=20480)
    parser.add_argument("--detector-only", action="store_true", help="only the default detector's row")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: the detector row's smoke run")
    parser.add_argument("--detector-size", type=int, default=256)
    parser.add_argument("--detector-images", type=int, default=32)
    parser.add_argument("--preset", default="default", help="the detector row's preset (default, fast)")
    parser.add_argument("--out", default="outputs/bench/results_gpu.json")
    args = parser.parse_args()
    if args.device == "cpu" and not args.detector_only:
        print("--device cpu runs only the detector row: add --detector-only (the other rows are GPU rates).", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("make bench-gpu needs a CUDA GPU; none is visible here (torch.cuda.is_available() is False). "
              "--detector-only --device cpu runs the detector row on the CPU.", file=sys.stderr)
        return 2
    if args.detector_only:
        rows = [detector_rate(args.device, args.detector_size, args.detector_images, args.preset, p)
                for p in (("fp32", "bf16") if args.device == "cuda" else ("fp32",))]
        for r in rows:
            _say_detector(r)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"torch": torch.__version__, "detector": rows}, indent=2))
        return 0
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(), "network": [], "pipeline": []}
    print(f"# zsad bench-gpu on {report['gpu']}, torch {report['torch']}: DiffPath CelebA-32 UNet (52.5M parameters), 32×32")
    batches = [int(b) for b in args.batches.split(",")]
    for compile_mode in ([None] if args.no_compile else [None, "max-autotune-no-cudagraphs", "reduce-overhead"]):
        backbone = _backbone(compile_mode)
        for precision in PRECISIONS:
            for batch in batches:
                r = {**network_rate(backbone, batch, precision, args.seconds), "compile": compile_mode}
                report["network"].append(r)
                print(f"network  compile={str(compile_mode):<27} {precision:<5} batch {batch:5d}: {r['evals_per_s']:9.0f} evals/s, "
                      f"peak {r['peak_memory_gib']:.1f} GiB", flush=True)
        del backbone
        torch.cuda.empty_cache()
    for precision in ("fp32", "bf16"):
        r = pipeline_rate(precision, args.pipeline_images, 1024)
        report["pipeline"].append(r)
        bare = max(x["evals_per_s"] for x in report["network"] if x["precision"] == precision and x["compile"] is None)
        print(f"pipeline {precision:<5} batch 1024: {r['images_per_s']:8.0f} images/s = {r['evals_per_s']:9.0f} evals/s "
              f"({r['evals_per_s'] / bare:.0%} of the bare eager network)", flush=True)
    from zsad.scoring.scorers import RECOMMENDED_SCORER

    r = pipeline_rate("bf16", args.pipeline_images, 1024, RECOMMENDED_SCORER, {})  # zsad's default detector (no lite preset ships)
    report["default"] = r
    print(f"default  {RECOMMENDED_SCORER} bf16 batch 1024: {r['images_per_s']:8.0f} images/s, {r['evaluations_per_image']} evaluations/image",
          flush=True)
    report["detector"] = [detector_rate("cuda", args.detector_size, args.detector_images, args.preset, p) for p in ("fp32", "bf16")]
    for r in report["detector"]:
        _say_detector(r)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
