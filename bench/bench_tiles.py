"""Cost of localisation by tiles on the CPU: one image at a working size through the tiled scorer (zsad's
default detector, diffpath_fused) with DiffPath's CelebA-32 UNet (random weights, fast path), as `zsad fit`
and `zsad score` run it. Reports seconds per tile and per image and the network evaluations per image;
the default 256 px / 32 px tiles every 16 px is 225 tiles, so `--stride 32` (64 tiles) measures the rate in
a quarter of the time and the per-image time at the default follows from the per-tile one.

`--preset fast` times the fast preset (zsad.detection.presets: tiles every tile, 2 steps) over the whole image: all
its tiles, as it runs, nothing extrapolated.

`--steps N` times the scorer at N trajectory steps (the sweep's "half tile, 2 steps" row is `--stride 16 --steps 2`).

Usage: python bench/bench_tiles.py [--working-size 256] [--stride 32] [--steps N] [--preset default|fast] [--network-batch 64] [--out outputs/bench/tiles.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from random_backbone import random_celeba32_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--working-size", type=int, default=256)
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--network-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=None, help="trajectory steps (default: the scorer's or the preset's)")
    parser.add_argument("--preset", default=None, help="time a preset's own tiling and scorer options (overrides --stride)")
    parser.add_argument("--out", default="outputs/bench/tiles.json")
    args = parser.parse_args()
    import torch

    import zsad
    from zsad.scoring.scorers import RECOMMENDED_SCORER
    from zsad.scoring.tiles import TiledScorer, Tiling

    backbone = random_celeba32_backbone()
    cfg = backbone.config
    options, stride = {}, args.stride
    if args.preset:
        from zsad.detection.presets import preset_options
        from zsad.scoring.scorers import SCORERS

        options, stride = preset_options(args.preset, SCORERS[RECOMMENDED_SCORER], None, None, cfg.image_size)
    if args.steps:
        options = {**options, "steps": args.steps}
    inner = zsad.build_scorer(RECOMMENDED_SCORER, network_batch=args.network_batch, **options)
    tiling = Tiling(args.working_size, args.working_size, cfg.image_size, stride)
    default = Tiling(256, 256, cfg.image_size, cfg.image_size // 2)
    scorer = TiledScorer(inner=inner, tiling=tiling, seed=0)
    image = torch.rand(1, 3, args.working_size, args.working_size) * 2 - 1
    start = time.perf_counter()
    scorer(backbone, image, with_maps=True)  # features and maps from one pass, as zsad fit and zsad score compute them
    seconds = time.perf_counter() - start
    per_tile = seconds / tiling.count
    report = {"preset": args.preset, "scorer_options": options, "working_size": args.working_size, "tiles": tiling.count, "stride": stride,
              "threads": torch.get_num_threads(),
              "evaluations_per_image": scorer.network_evaluations_per_image(backbone.num_timesteps), "seconds": seconds,
              "seconds_per_tile": per_tile, "default_tiles": default.count, "default_seconds_per_image": per_tile * default.count}
    print(f"{args.preset or 'tiles'}: {tiling.count} tiles at {args.working_size} px (stride {stride}), {report['evaluations_per_image']} network evaluations: "
          f"{seconds:.1f} s = {per_tile:.2f} s per tile on {report['threads']} threads; at the default ({default.count} tiles, stride "
          f"{default.stride}): {report['default_seconds_per_image'] / 60:.1f} min per image")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
