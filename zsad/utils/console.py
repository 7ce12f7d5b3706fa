"""What a run prints: one line per stage on rank 0, progress bars, no Lightning tips or repeated banners.

Verbosity travels in ZSAD_VERBOSITY so that processes Lightning or srun start inherit it:
0 = quiet (errors, the final table and summary), 1 = normal (default), 2 = verbose (every Lightning line)."""

from __future__ import annotations

import logging
import os
import sys
import warnings

from zsad.utils.dist import env_global_rank

_BANNERS = ("GPU available", "TPU available", "HPU available", "LOCAL_RANK:")
# The loggers Lightning's messages are created on (a filter on a parent logger would not see them).
_LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
    "lightning.pytorch", "lightning.fabric", "lightning",
)


def verbosity() -> int:
    value = os.environ.get("ZSAD_VERBOSITY", "1")
    return int(value) if value.lstrip("-").isdigit() else 1


class _LightningFilter(logging.Filter):
    """Drops Lightning's advertising tips, and its hardware banner after the first time it was shown."""

    seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if verbosity() >= 2:
            return True
        message = record.getMessage()
        if message.startswith("💡 Tip"):
            return False
        for banner in _BANNERS:
            if message.startswith(banner):
                if banner in self.seen or verbosity() == 0:
                    return False
                self.seen.add(banner)
        return verbosity() > 0 or record.levelno >= logging.WARNING


def setup_console(level: int | None = None) -> None:
    """Apply a verbosity (None: keep the inherited one) to this process and the ones it starts."""
    if level is not None:
        os.environ["ZSAD_VERBOSITY"] = str(level)
    filt = _LightningFilter()
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _LightningFilter) for f in logger.filters):
            logger.addFilter(filt)
        for handler in logger.handlers:
            if not any(isinstance(f, _LightningFilter) for f in handler.filters):
                handler.addFilter(filt)
    if verbosity() < 2:
        # A deprecation inside Lightning's own code, printed once per Trainer: nothing a user can act on.
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*The `srun` command is available on your system but is not used.*")
        # A resumed run writes into its own checkpoint folder on purpose (last.ckpt and step_*.ckpt live there).
        warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")


def say(message: str, level: int = 1) -> None:
    """Print one line on rank 0 when the verbosity is at least `level`."""
    if env_global_rank() == 0 and verbosity() >= level:
        print(message, flush=True)


def warn(message: str) -> None:
    """A warning line on rank 0, shown unless quiet."""
    if env_global_rank() == 0 and verbosity() >= 1:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def progress_enabled() -> bool:
    return env_global_rank() == 0 and verbosity() >= 1
