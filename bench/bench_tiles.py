"""Cost of localisation by tiles on the CPU: one image at a working size through the tiled scorer (zsad's
default detector, diffpath_fused) with DiffPath's CelebA-32 UNet (random weights, fast path), as `zsad fit`
and `zsad score` run it. Reports seconds per tile and per image and the network evaluations per image.

By default it times the `default` preset (zsad.detection.presets: 32 px tiles every 16 px, 225 tiles at 256 px, 5
steps) over the whole image, as it runs, nothing extrapolated; `--preset fast` (tiles every tile, 2 steps) likewise.
`--stride S` and `--steps N` replace the preset's tile stride and trajectory steps (the sweep's "half tile, 2 steps"
row is `--stride 16 --steps 2`; `--stride 32` measures the per-tile rate in a quarter of the time).

Usage: python bench/bench_tiles.py [--preset default|fast] [--working-size 256] [--stride S] [--steps N] [--network-batch N] [--out outputs/bench/tiles.json]
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
    parser.add_argument("--stride", type=int, default=None, help="tile stride in px (default: the preset's)")
    parser.add_argument("--network-batch", type=int, default=None, help="rows per network call (default: as zsad fit chooses)")
    parser.add_argument("--steps", type=int, default=None, help="trajectory steps (default: the scorer's or the preset's)")
    parser.add_argument("--preset", default="default", help="the preset whose tiling and scorer options are timed")
    parser.add_argument("--out", default="outputs/bench/tiles.json")
    args = parser.parse_args()
    import torch

    from zsad.detection.model import detector_scorer
    from zsad.scoring.tiles import Tiling

    backbone = random_celeba32_backbone()
    cfg = backbone.config
    size = (args.working_size, args.working_size)
    steps = {"steps": args.steps} if args.steps else None
    # as `zsad fit` builds it: the preset's stride and steps unless named, the call size fit chooses unless named
    scorer = detector_scorer(backbone, size, torch.device("cpu"), scorer_options=steps, preset=args.preset, tile_stride=args.stride,
                             network_batch=args.network_batch)
    tiling, options, stride = scorer.tiling, {k: v for k, v in scorer.inner.options().items() if k == "steps"}, scorer.tiling.stride
    default = Tiling(256, 256, cfg.image_size, cfg.image_size // 2)  # the default's tiles at 256 px, at this setting's per-tile cost
    image = torch.rand(1, 3, args.working_size, args.working_size) * 2 - 1
    start = time.perf_counter()
    scorer(backbone, image, with_maps=True)  # features and maps from one pass, as zsad fit and zsad score compute them
    seconds = time.perf_counter() - start
    per_tile = seconds / tiling.count
    report = {"preset": args.preset, "scorer_options": options, "working_size": args.working_size, "tiles": tiling.count, "stride": stride,
              "threads": torch.get_num_threads(),
              "evaluations_per_image": scorer.network_evaluations_per_image(backbone.num_timesteps), "seconds": seconds,
              "seconds_per_tile": per_tile, "default_tiles": default.count, "default_seconds_per_image": per_tile * default.count}
    print(f"{args.preset} {options}: {tiling.count} tiles at {args.working_size} px (stride {stride}), {report['evaluations_per_image']} network evaluations: "
          f"{seconds:.1f} s = {per_tile:.2f} s per tile on {report['threads']} threads; at the default ({default.count} tiles, stride "
          f"{default.stride}) at this per-tile cost: {report['default_seconds_per_image'] / 60:.1f} min per image")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
