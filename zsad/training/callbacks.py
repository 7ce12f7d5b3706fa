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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the same folder, fsync, then rename: a kill never leaves half a file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

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
        save_image(grid, path)
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
        trainer.save_checkpoint(self.path)
