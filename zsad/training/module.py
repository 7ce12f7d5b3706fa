"""LightningModule that trains the base diffusion model (noise prediction, EMA, AdamW with warm-up)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightning as L
import torch

from zsad.data import build_training_dataset
from zsad.training.ema import ImageCountedEMA
from zsad.training.networks import build_diffusion
from zsad.training.sampler import StepBatchSampler, StepIndexedDataLoader


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the global RNG at one step on one process: resume-exact noise, timesteps and dropout."""
    digest = hashlib.sha256(f"{seed}/{step}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class DiffusionTrainingModule(L.LightningModule):
    """Wraps GaussianDiffusion; `hparams` hold the plain-dict config (so checkpoints load with weights_only)."""

    def __init__(self, config: dict, total_steps: int):
        super().__init__()
        self.save_hyperparameters()
        self.cfg = config
        self.total_steps = int(total_steps)
        image_size = int(config["data"]["image_size"])
        from omegaconf import OmegaConf

        model_cfg = OmegaConf.create(config["model"])
        self.diffusion = build_diffusion(model_cfg, image_size, sampling_steps=config["samples"]["sampling_steps"])
        self.ema = ImageCountedEMA(self.diffusion, config["ema"]["halflife_images"], config["ema"]["rampup_ratio"])

    # ---- data -------------------------------------------------------------------------------
    def train_dataloader(self) -> StepIndexedDataLoader:
        from omegaconf import OmegaConf

        data_cfg = OmegaConf.create(self.cfg["data"])
        dataset = build_training_dataset(data_cfg)
        trainer = self.trainer
        # The sampler starts at the trainer's global step when iterated (restored on resume).
        sampler = StepBatchSampler(
            len(dataset),
            int(self.cfg["batch_size"]),
            trainer.world_size,
            trainer.global_rank,
            int(self.cfg["seed"]),
            start_step=lambda: trainer.global_step,
            end_step=self.total_steps,
        )
        workers = int(data_cfg.num_workers)
        return StepIndexedDataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=torch.cuda.is_available(), persistent_workers=False)

    # ---- optimisation -------------------------------------------------------------------------
    stop_requested = False  # set by SlurmPreemption once the preemption checkpoint is written

    def on_train_batch_start(self, batch, batch_idx: int):
        if self.stop_requested:
            return -1  # Lightning: skip the rest of the epoch (= the rest of training)
        return None

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, idx = batch
        torch.manual_seed(step_seed(int(self.cfg["seed"]), self.global_step, self.global_rank))
        loss = self.diffusion(x)
        if self.cfg.get("record_sample_indices"):
            self._record(idx)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, sync_dist=False)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        self.log("train/images_seen", float((self.global_step + 1) * int(self.cfg["batch_size"])), on_step=True, on_epoch=False)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        clip = float(self.cfg["optim"]["grad_clip"])
        if clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.diffusion.parameters(), clip)
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here, not in on_train_batch_end: checkpoint callbacks run before that hook, and a resumed
        # run must not miss the EMA update of the step the checkpoint was taken at.
        self.ema.step_images(int(self.cfg["batch_size"]))

    def configure_optimizers(self):
        o = self.cfg["optim"]
        opt = torch.optim.AdamW(self.diffusion.parameters(), lr=float(o["lr"]), betas=tuple(o["betas"]), weight_decay=float(o["weight_decay"]))
        warmup_steps = max(1.0, float(o["warmup_images"]) / int(self.cfg["batch_size"]))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _Warmup(warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _record(self, idx: torch.Tensor) -> None:
        """Append (step, restart, indices) for this process: the audit trail of what each step trained on."""
        out = Path(self.cfg["output_dir"]) / "sample_indices"
        out.mkdir(parents=True, exist_ok=True)
        line = {"step": self.global_step, "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0")), "indices": [int(i) for i in idx]}
        with open(out / f"rank{self.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")


class _Warmup:
    """Linear warm-up factor; a class (not a lambda) so the scheduler state stays plain data."""

    def __init__(self, steps: float):
        self.steps = steps

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.steps)
