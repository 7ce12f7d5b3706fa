"""Training callbacks: EMA sample grids, throughput in images/s, atomic checkpoint files."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torchvision.utils import make_grid, save_image

from zsad.utils.files import disk_full_guard

MIN_GRID_WIDTH = 512  # px: a 6 × 6 grid of 16 px samples is 108 px wide, too small to see anything


def enlarge(image: torch.Tensor, min_width: int) -> torch.Tensor:
    """Upscale [C, H, W] by the smallest integer factor that reaches `min_width`, nearest neighbour
    (pixels stay pixels: no blur that would flatter the samples)."""
    factor = max(1, -(-min_width // image.shape[-1]))
    return torch.nn.functional.interpolate(image[None], scale_factor=factor, mode="nearest")[0] if factor > 1 else image


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the same folder, fsync, then rename: a kill never leaves half a file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        needed = sum(t.numel() * t.element_size() for t in _tensors(checkpoint))
        try:
            with disk_full_guard(path, needed, partial=[tmp]):
                with open(tmp, "wb") as f:
                    torch.save(checkpoint, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
        except BaseException:  # a SIGTERM (zsad.utils.signals.Terminated) or any error mid-write: no stale temporary file
            tmp.unlink(missing_ok=True)
            raise

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        # Our checkpoints hold only tensors and plain data, so the safe loader always suffices.
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class SampleGrid(L.Callback):
    """Every `every_n_steps` and at the end: a grid of DDIM samples from the EMA model (rank 0 only)."""

    def __init__(self, output_dir: str | Path, every_n_steps: int, num: int, seed: int):
        self.dir = Path(output_dir) / "samples"
        self.every, self.num, self.seed = every_n_steps, num, seed
        self._last_step = -1

    def _sample(self, trainer: L.Trainer, pl_module) -> None:
        step = trainer.global_step
        if step == self._last_step or not trainer.is_global_zero:
            return
        self._last_step = step
        ema_diffusion = pl_module.ema.ema_model
        with torch.random.fork_rng(devices=[pl_module.device] if pl_module.device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            was_training = ema_diffusion.training
            ema_diffusion.eval()
            images = ema_diffusion.sample(batch_size=self.num)  # in [-1, 1] (auto_normalize is off)
            ema_diffusion.train(was_training)
        grid = make_grid(((images.float().clamp(-1, 1) + 1) / 2).cpu(), nrow=int(self.num**0.5) or 1)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"step_{step:07d}.png"
        save_image(enlarge(grid, MIN_GRID_WIDTH), path)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="samples/ema", images=[str(path)], step=step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every and trainer.global_step % self.every == 0:
            self._sample(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._sample(trainer, pl_module)


class Throughput(L.Callback):
    """Logs images/s over all processes (global batch / wall time per step)."""

    def __init__(self, global_batch: int):
        self.global_batch = global_batch
        self._t = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t is None:
            self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        dt = now - self._t
        self._t = now
        if dt > 0:
            pl_module.log("train/images_per_sec", self.global_batch / dt, on_step=True, on_epoch=False)


class FinalCheckpoint(L.Callback):
    """Write last.ckpt at the end of training, which rarely falls on a multiple of every_n_steps."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_train_end(self, trainer, pl_module) -> None:
        if getattr(pl_module, "stop_requested", False):
            return  # stopped for preemption: SlurmPreemption already wrote the checkpoint of this step
        trainer.save_checkpoint(self.path, weights_only=False)


class SlurmPreemption(L.Callback):
    """On SIGUSR1 (Slurm's --signal before the time limit, or `scancel --signal=USR1`): at the next step
    boundary every process agrees to stop, last.ckpt is written, and rank 0 runs `scontrol requeue`.

    Lightning's own handler checkpoints inside the signal handler, possibly mid-step and while the
    other processes are in a collective; deciding at a step boundary keeps the state exact."""

    def __init__(self, checkpoint_path: str | Path, signum: int | None = None):
        import signal

        self.path = Path(checkpoint_path)
        self.signum = signum if signum is not None else signal.SIGUSR1
        self.flag = False
        self.requeued = False

    def _handler(self, signum, frame) -> None:
        self.flag = True

    def on_fit_start(self, trainer, pl_module) -> None:
        import signal

        signal.signal(self.signum, self._handler)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stop = trainer.strategy.reduce_boolean_decision(self.flag, all=False)
        if not stop or self.requeued:
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self.requeued = True
        trainer.should_stop = True
        pl_module.stop_requested = True  # no further step may run after this checkpoint
        if trainer.is_global_zero:
            import subprocess

            job = os.environ.get("SLURM_ARRAY_JOB_ID")
            job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ.get("SLURM_JOB_ID", "")
            print(f"[zsad] preemption signal: checkpoint at step {trainer.global_step} written to {self.path}; requeueing job {job}", flush=True)
            if job:
                result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
                print(f"[zsad] scontrol requeue {job}: exit {result.returncode} {result.stderr.strip()}", flush=True)
