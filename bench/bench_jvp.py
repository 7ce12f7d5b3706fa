"""What a SCOPED pass costs on the CPU: one network call of DiffPath's CelebA-32 UNet (random weights) as a plain
forward, as a forward with reverse-mode vᵀJ (then the dot with v), and as forward-mode (ε̂, Jv) by torch.func.jvp,
on the plain attention path and on the fast path. Medians of `--rounds` timed calls after one warm-up; the ratios
to the forward on the same path are the forward-equivalents a pass costs (docs/speed.md).

Usage: python bench/bench_jvp.py [--batch 8] [--rounds 5] [--threads 2] [--out outputs/bench/jvp.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from random_backbone import random_celeba32_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="outputs/bench/jvp.json")
    args = parser.parse_args()
    import torch

    from zsad.diffusion.fast import plain_attention, set_fast_path
    from zsad.scoring.scorers.scoped import eps_and_quadratic_forms

    torch.set_num_threads(args.threads)
    backbone = random_celeba32_backbone(fast=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((args.batch, 3, 32, 32), generator=g)
    t = torch.full((args.batch,), 200, dtype=torch.int64)
    v = torch.where(torch.randn((args.batch, 1, 3, 32, 32), generator=g) >= 0, 1.0, -1.0)

    def median_seconds(call) -> float:
        call()
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def forward() -> None:
        with torch.inference_mode():
            backbone.predict_eps(x, t)

    rows = []
    for sdpa in (False, True):
        set_fast_path(backbone, sdpa=sdpa, channels_last=True)
        base = median_seconds(forward)
        rev = median_seconds(lambda: eps_and_quadratic_forms(backbone.predict_eps, x, t, v, "reverse"))
        with plain_attention(backbone):  # what the scorer does for forward mode
            fwd = median_seconds(lambda: eps_and_quadratic_forms(backbone.predict_eps, x, t, v, "forward"))
        for what, seconds in (("forward", base), ("forward + reverse-mode vJP", rev), ("forward-mode JVP (torch.func.jvp)", fwd)):
            rows.append({"attention": "fused (sdpa)" if sdpa else "plain", "pass": what, "seconds_per_call": round(seconds, 4),
                         "forward_equivalents": round(seconds / base, 2)})
            print(f"{rows[-1]['attention']:13s} {what:34s} {seconds * 1000:8.1f} ms  {seconds / base:5.2f}×")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"batch": args.batch, "threads": args.threads, "rounds": args.rounds, "torch": torch.__version__,
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
