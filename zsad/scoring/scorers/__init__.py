"""Trajectory feature extractors, looked up by name: `build_scorer(name, **options)`.

A new scorer is one file here plus its entry in SCORERS and its golden features (docs/extending.md)."""

from __future__ import annotations

import dataclasses
import difflib

from zsad.errors import ConfigError, UnknownNameError
from zsad.scoring.scorers.base import Scorer, image_seeds, padding_share, per_image_noise, pixel_digest
from zsad.scoring.scorers.diffpath import DiffPath1D, DiffPath6D, diffpath_statistics
from zsad.scoring.scorers.diffpath_v2 import DiffPathV2
from zsad.scoring.scorers.fused import DiffPathFused
from zsad.scoring.scorers.msma import MSMA
from zsad.scoring.scorers.recon import Recon
from zsad.scoring.scorers.scoped import SCOPED
from zsad.scoring.scorers.ufcod import UFCOD

SCORERS: dict[str, type[Scorer]] = {cls.name: cls for cls in (DiffPathV2, DiffPath6D, DiffPath1D, Recon, DiffPathFused, MSMA, UFCOD, SCOPED)}

# The scorer that computes the paper's method (DiffPathV2 as its abstract describes it), and zsad's own
# recommended detector (the best mean near-shift AUROC over both offline benchmarks), which is the default
# wherever zsad chooses for the user (`zsad fit`, `zsad demo`'s headline, the Python API).
PAPER_SCORER = DiffPathV2.name
RECOMMENDED_SCORER = DiffPathFused.name


def build_scorer(name: str, **options) -> Scorer:
    """A scorer by name with its options; unknown names or options list the valid ones."""
    if name not in SCORERS:
        near = difflib.get_close_matches(name, SCORERS, n=2)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise UnknownNameError(f"Unknown scorer '{name}'.{hint} Known scorers: {', '.join(SCORERS)}.")
    cls = SCORERS[name]
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ConfigError(f"Scorer '{name}' has no option(s) {', '.join(unknown)}. Valid options: {', '.join(valid)}.")
    return cls(**options)


__all__ = [
    "PAPER_SCORER", "RECOMMENDED_SCORER", "SCORERS", "Scorer", "build_scorer", "diffpath_statistics", "image_seeds", "padding_share",
    "per_image_noise", "pixel_digest",
]
