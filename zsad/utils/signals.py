"""SIGTERM ends a zsad run (`docker stop`, systemd, Kubernetes send it), outside Slurm.

Lightning's Trainer replaces the SIGTERM handler while it runs (trainer/connectors/signal_connector.py) by
one that only records the signal: the fit loop stops at its next check, and the predict loop (feature
extraction) never checks, so a SIGTERM was logged and ignored. That connector keeps a handler that was
installed before it, calls it after its own (`_HandlersCompose`) and restores it at teardown. So zsad
installs its handler before any Trainer exists, and inside a Trainer run Lightning's notifier runs first
(it forwards the signal to the DDP processes it launched), then ours raises `Terminated`.

Under Slurm (SLURM_JOB_ID set and Lightning's SLURMEnvironment detected) nothing is installed: the requeue
behaviour of `zsad train` stays Lightning's and `SlurmPreemption`'s."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass
from typing import Iterator, Optional

EXIT_CODE = 128 + int(signal.SIGTERM)  # what a shell reports for a process ended by SIGTERM


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives. A BaseException, so no `except Exception` swallows
    it; not a KeyboardInterrupt, which Lightning turns into `sys.exit(1)`."""

    def __init__(self, signum: int = int(signal.SIGTERM)):
        super().__init__(f"received signal {signum}")
        self.signum = signum


@dataclass
class SigtermState:
    """Whether SIGTERM arrived inside `sigterm_ends_run`, and whether the handler was installed at all."""

    installed: bool = False
    received: bool = False


def under_slurm() -> bool:
    """A Slurm batch job as Lightning sees it (its SLURMEnvironment); an interactive `srun --pty bash` is not."""
    if not os.environ.get("SLURM_JOB_ID"):
        return False
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


@contextlib.contextmanager
def sigterm_ends_run(enabled: Optional[bool] = None) -> Iterator[SigtermState]:
    """Inside the block, SIGTERM raises `Terminated` in the main thread (a second one exits at once);
    the previous handler is restored after it. Not installed under Slurm or outside the main thread."""
    state = SigtermState()
    if enabled is None:
        enabled = not under_slurm()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield state
        return
    owner = os.getpid()

    def handler(signum, frame) -> None:
        if os.getpid() != owner:  # a forked child (a DataLoader worker) ends as it would by default
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if state.received:  # a second SIGTERM while cleaning up: stop now (renamed files are whole)
            os.write(2, b"zsad: second SIGTERM, exiting at once\n")
            os._exit(EXIT_CODE)
        state.received = True
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    state.installed = True
    try:
        yield state
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
