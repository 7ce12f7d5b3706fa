"""Progress bars for long loops (feature extraction, scoring, GMM grid, bootstrap): one bar, on rank 0."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from tqdm.auto import tqdm

from zsad.utils.console import progress_enabled


@contextlib.contextmanager
def progress_bar(total: int, desc: str, unit: str = "img") -> Iterator[tqdm]:
    """A tqdm bar on stderr (rate and ETA), on rank 0 only and not when quiet."""
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not progress_enabled(), dynamic_ncols=True, leave=True, mininterval=0.5)
    try:
        yield bar
    finally:
        bar.close()
