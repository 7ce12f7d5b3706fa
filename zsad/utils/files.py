"""Writing files safely: a full disk is one clear error that names the file and the space needed, and
leaves no partial file behind (the previous version of the file, if any, stays intact)."""

from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path
from typing import Iterable, Iterator, Optional

from zsad.errors import ZsadError


class DiskFullError(ZsadError, OSError):
    """No space left while writing a checkpoint, a cache entry or results."""


def _mib(n: Optional[int]) -> str:
    return "unknown size" if n is None else f"{n / 2**20:.1f} MiB"


@contextlib.contextmanager
def disk_full_guard(target: str | Path, needed_bytes: Optional[int] = None, partial: Iterable[str | Path] = ()) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT inside the block into DiskFullError, removing the `partial` files first."""
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        for path in partial:
            Path(path).unlink(missing_ok=True)
        where = Path(target).parent
        while not where.exists():
            where = where.parent
        free = shutil.disk_usage(where).free
        raise DiskFullError(
            f"No space left on the device while writing {target}: it needs about {_mib(needed_bytes)}, {_mib(free)} are free "
            f"under {where}. The partial file was removed and earlier files are intact; free some space (or point the "
            "output folder elsewhere) and run the same command again."
        ) from None
