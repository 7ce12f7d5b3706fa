"""How long a run will take, said before the long work starts (docs/detection.md).

One network call at the run's shape (a batch of `network_batch` tiles at the backbone's resolution) is timed
after a warm-up call; every other cost of a tiled run is small beside the network's, so

    seconds ≈ images × network evaluations per image × (seconds per call / rows per call).

When the estimate is long on a CPU, the settings that cut it most are named with their own estimates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch

from zsad.diffusion.backbone import Backbone
from zsad.scoring.tiles import Tiling

LONG_RUN_SECONDS = 600  # past this, a CPU run names the settings that would cut it most


@dataclass(frozen=True)
class Estimate:
    """The expected seconds of a run and how they were obtained."""

    seconds: float
    seconds_per_evaluation: float
    evaluations: int

    def sentence(self, what: str) -> str:
        return (f"{what}: about {duration(self.seconds)} ({self.evaluations:,} network evaluations at "
                f"{self.seconds_per_evaluation * 1e3:.3g} ms each, timed on one call at this run's shape)")


def duration(seconds: float) -> str:
    """A duration a person reads at a glance: 45 s, 12 min, 3.2 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@torch.no_grad()
def seconds_per_evaluation(backbone: Backbone, rows: int) -> float:
    """Seconds of one ε̂ evaluation of one tile, from one timed call of `rows` tiles (after a warm-up call)."""
    device = backbone.alphas_cumprod.device
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 3, backbone.image_size, backbone.image_size, generator=generator).to(device)
    t = torch.full((rows,), backbone.num_timesteps // 2, dtype=torch.long, device=device)
    backbone.predict_eps(x[:1], t[:1])  # warm-up: first-call allocations and kernel selection
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    backbone.predict_eps(x, t)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / rows


def estimate(per_evaluation: float, images: int, evaluations_per_image: int) -> Estimate:
    evaluations = int(images) * int(evaluations_per_image)
    return Estimate(evaluations * per_evaluation, per_evaluation, evaluations)


def faster_settings(tiling: Tiling, evaluations_per_tile: int, per_evaluation: float, images: int,
                    fast_evaluations_per_tile: Optional[int] = None) -> list[str]:
    """The settings that cut a tiled run most, each with its estimate: the fast preset (when it does less than this run;
    `fast_evaluations_per_tile` is the scorer's cost per tile under it), non-overlapping tiles, smaller working sizes."""
    options, lines = [], []
    if tiling.count > 1 and tiling.stride < tiling.tile:
        wide = Tiling(tiling.height, tiling.width, tiling.tile, tiling.tile)
        if fast_evaluations_per_tile and fast_evaluations_per_tile < evaluations_per_tile:
            lines.append(_line("--preset fast", wide.count, fast_evaluations_per_tile, per_evaluation, images))
        options.append((f"--tile-stride {tiling.tile}", wide.count))
    for factor in (2, 4):
        long_side = tiling.working_size // factor
        if long_side >= tiling.tile:
            h = max(tiling.tile, round(tiling.height / factor))
            w = max(tiling.tile, round(tiling.width / factor))
            options.append((f"--working-size {long_side}", Tiling(h, w, tiling.tile, max(1, tiling.tile // 2)).count))
    return lines + [_line(flag, count, evaluations_per_tile, per_evaluation, images) for flag, count in options]


def _line(flag: str, tiles: int, evaluations_per_tile: int, per_evaluation: float, images: int) -> str:
    return f"{flag}: {tiles} tile(s) per image, about {duration(images * tiles * evaluations_per_tile * per_evaluation)}"
