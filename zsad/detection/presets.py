"""Named bundles of `zsad fit` / `zsad test` settings (`--preset`). A preset fills only what the user left unset:
an explicit `--tile-stride` or scorer option always wins.

* `default`: tiles every half tile and, for the recommended scorer (diffpath_fused), 5 trajectory steps instead of its
  own 10: half the network evaluations at no measured loss (experiments/fast_preset/RULE.md picked it by a rule
  written before the sweep, on two defect benchmarks). Other scorers keep their own steps: they were not measured.
* `fast`: tiles every tile (64 instead of 225 at 256 px with 32 px tiles) and 2 trajectory steps (4 network
  evaluations per tile for diffpath_fused instead of 20): 17.6× fewer evaluations, for a 256 px image in under
  30 s on 2 CPU cores (`make bench-tiles`). What it costs in AUROC and AUPRO is in docs/speed.md; it is not the
  default unless experiments/fast_preset/RULE.md says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from zsad.errors import ConfigError
from zsad.scoring.scorers import RECOMMENDED_SCORER


@dataclass(frozen=True)
class Preset:
    stride_in_tiles: float = 0.5  # tile stride as a share of the tile
    scorer_options: dict = field(default_factory=dict)  # applied where the scorer has the option
    only_scorers: Optional[tuple[str, ...]] = None  # the scorers the options were measured on (None: any with the option)


PRESETS = {"default": Preset(scorer_options={"steps": 5}, only_scorers=(RECOMMENDED_SCORER,)),
           "fast": Preset(stride_in_tiles=1.0, scorer_options={"steps": 2})}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset '{name}'. Known presets: {', '.join(PRESETS)} (--preset).")
    return PRESETS[name]


def preset_options(name: str, scorer_cls: type, scorer_options: Optional[dict], tile_stride: Optional[int], tile: int) -> tuple[dict, int]:
    """(scorer options, tile stride in px) with the preset filling what the caller left unset; options the scorer
    does not have (msma's or scoped's levels instead of steps) are left out, and so are all of them for a scorer the
    preset was not measured on. An option the caller set one level down (diffpath_fused's `v2: {steps: 10}`) counts
    as set."""
    preset = get_preset(name)
    given = dict(scorer_options or {})
    known = {f.name for f in dataclasses.fields(scorer_cls)}
    if preset.only_scorers is not None and getattr(scorer_cls, "name", None) not in preset.only_scorers:
        known = set()
    nested = {k for value in given.values() if isinstance(value, dict) for k in value}
    options = {k: v for k, v in preset.scorer_options.items() if k in known and k not in nested}
    options.update(given)
    stride = int(tile_stride) if tile_stride else max(1, int(tile * preset.stride_in_tiles))
    return options, stride
