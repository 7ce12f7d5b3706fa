"""Side by side with the reference: DiffPath's own code (clear-nus/diffpath) against zsad's `diffpath_6d`,
in one process, on the same random weights of DiffPath's CelebA-32 UNet, DDIM-10 inversion.

The reference is not a dependency and nothing of it is copied: clone it and point at the clone.
    git clone https://github.com/clear-nus/diffpath /tmp/diffpath
    python bench/bench_reference.py --reference /tmp/diffpath [--images 32 --batch 16 --threads 2]

Rounds alternate reference / zsad-plain / zsad-fast batches so that all see the same machine state;
after one full-size warm-up round of each, images/s is the median over rounds. The 6 statistics of both are compared too (same weights, same
images): the speed-up is only worth quoting if the numbers agree. Writes outputs/bench/reference.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CELEBA32 = dict(image_size=32, num_channels=128, num_res_blocks=3, learn_sigma=True, diffusion_steps=4000,
                noise_schedule="cosine", dropout=0.3, use_zero_module=True)  # configs/celeba_model_config.yaml


def reference_model(root: Path, steps: int):
    if not (root / "improved_diffusion" / "script_util.py").is_file():
        sys.exit(f"{root} is not a clone of clear-nus/diffpath (no improved_diffusion/script_util.py). "
                 "Clone it: git clone https://github.com/clear-nus/diffpath")
    sys.path.insert(0, str(root))
    from improved_diffusion.script_util import args_to_dict, create_model_and_diffusion, model_and_diffusion_defaults

    args = {**model_and_diffusion_defaults(), **CELEBA32, "timestep_respacing": f"ddim{steps}"}
    model, diffusion = create_model_and_diffusion(**args_to_dict(argparse.Namespace(**args), model_and_diffusion_defaults().keys()))
    torch.manual_seed(0)
    with torch.no_grad():  # random weights everywhere (its zero-initialised output layers would make ε̂ ≡ 0)
        for p in model.parameters():
            p.normal_(0, 0.05 if p.ndim > 1 else 0.01)
    return model.eval(), diffusion


def reference_stats(model, diffusion, x: torch.Tensor) -> np.ndarray:
    """The reference's path statistics as its save_*_statistics.py computes them, the 6 its eval_6d.py stacks."""
    _, eps = diffusion.ddim_reverse_sample_loop(model, x.shape, x, clip_denoised=True, return_eps=True)
    eps = np.array([e.cpu().numpy() for e in eps]).transpose(1, 0, 2, 3, 4)  # float32 sums, as the reference
    d = np.diff(eps, axis=1) * len(diffusion.betas)
    axes = (1, 2, 3, 4)
    return np.stack([np.sum(eps, axes), np.sum(eps**2, axes), np.sum(eps**3, axes),
                     np.sum(d, axes), np.sum(d**2, axes), np.sum(d**3, axes)], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, type=Path, help="a clone of https://github.com/clear-nus/diffpath")
    parser.add_argument("--images", type=int, default=64, help="a multiple of --batch (no padded calls)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/reference.json"))
    args = parser.parse_args()
    if args.images % args.batch:
        sys.exit(f"--images {args.images} is not a multiple of --batch {args.batch}: the last call would be padded for zsad only.")
    torch.set_num_threads(args.threads)

    import zsad
    from zsad.diffusion.fast import set_fast_path

    model, diffusion = reference_model(args.reference, args.steps)
    with tempfile.TemporaryDirectory() as tmp:  # the same weights through zsad's loader (weights_only)
        path = Path(tmp) / "celeba32_random.pt"
        torch.save(model.state_dict(), path)
        ours = zsad.load_backbone(path, format="improved-diffusion", config="diffpath-celeba32")
    scorer = zsad.build_scorer("diffpath_6d", steps=args.steps, clip_denoised=True, network_batch=args.batch)

    x = torch.rand(args.images, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batches = [x[i : i + args.batch] for i in range(0, args.images, args.batch)]

    def run_reference(b):
        return reference_stats(model, diffusion, b)

    def run_zsad(b):
        return scorer(ours, b, seed=0).numpy()

    runs = {"reference": run_reference, "zsad_plain": run_zsad, "zsad_fast": run_zsad}
    fast_of = {"zsad_plain": False, "zsad_fast": True}
    times: dict[str, list[float]] = {k: [] for k in runs}
    stats: dict[str, list[np.ndarray]] = {k: [] for k in runs}
    for round_ in range(-1, len(batches)):  # round -1: a full-size warm-up of each variant (oneDNN primitives are per shape)
        b = batches[max(round_, 0)]
        for name, fn in runs.items():
            if name in fast_of:
                set_fast_path(ours, sdpa=fast_of[name], channels_last=fast_of[name])
            start = time.perf_counter()
            out = fn(b)
            if round_ >= 0:
                stats[name].append(out)
                times[name].append((time.perf_counter() - start) / len(b))
    rate = {k: 1.0 / statistics.median(v) for k, v in times.items()}
    ref = np.concatenate(stats["reference"]).astype(np.float64)
    scale = np.abs(ref).max(axis=0)  # per feature: Σε and Σdε are signed sums that can be near 0 for one image
    deviation = {k: float(np.max(np.abs(np.concatenate(stats[k]) - ref) / scale)) for k in ("zsad_plain", "zsad_fast")}
    result = {
        "machine": f"{platform.machine()}, {args.threads} threads, torch {torch.__version__}",
        "setting": {"images": args.images, "batch": args.batch, "steps": args.steps, "model": "DiffPath CelebA-32 UNet, random weights"},
        "images_per_s": rate,
        "speedup_vs_reference": {k: rate[k] / rate["reference"] for k in ("zsad_plain", "zsad_fast")},
        "max_relative_deviation_of_6d_features": deviation,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for k, v in rate.items():
        extra = f"  {rate[k] / rate['reference']:.2f}x  max rel. feature deviation {deviation[k]:.1e}" if k != "reference" else ""
        print(f"{k:>11}: {v:.2f} images/s{extra}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
