"""Progress bars for long loops (feature extraction, scoring, GMM grid, bootstrap): one bar, on rank 0."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from tqdm.auto import tqdm

from zsad.utils.dist import env_global_rank


@contextlib.contextmanager
def progress_bar(total: int, desc: str, unit: str = "img") -> Iterator[tqdm]:
    """A tqdm bar on stderr (rate and ETA), disabled on ranks other than 0."""
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=env_global_rank() != 0, dynamic_ncols=True, leave=False)
    try:
        yield bar
    finally:
        bar.close()
