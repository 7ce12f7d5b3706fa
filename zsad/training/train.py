"""`zsad train`: wire config → data, model, Trainer, logger; run; always close the logger."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from zsad.config import ConfigError, save_config, to_plain
from zsad.training.callbacks import AtomicCheckpointIO, FinalCheckpoint, SampleGrid, SlurmPreemption, Throughput
from zsad.training.module import DiffusionTrainingModule
from zsad.utils.dist import env_global_rank
from zsad.utils.loggers import build_logger, close_loggers


def total_steps(cfg: DictConfig) -> int:
    """Training length in optimiser steps: trainer.max_steps if set, else total_images / batch_size."""
    if cfg.trainer.max_steps:
        return int(cfg.trainer.max_steps)
    return max(1, math.ceil(int(cfg.total_images) / int(cfg.batch_size)))


def resolve_precision(cfg: DictConfig) -> str:
    if cfg.trainer.precision:
        return str(cfg.trainer.precision)
    on_gpu = torch.cuda.is_available() and str(cfg.trainer.accelerator) in ("auto", "gpu", "cuda")
    return "bf16-mixed" if on_gpu else "32-true"


def resume_path(cfg: DictConfig) -> Optional[str]:
    """`auto`: output_dir/checkpoints/last.ckpt if it exists; `never`: start fresh; else an explicit path."""
    value = str(cfg.resume)
    if value == "never":
        return None
    if value == "auto":
        last = Path(cfg.output_dir) / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(value).is_file():
        raise ConfigError(f"resume={value}: no such checkpoint file. Use resume=auto, resume=never or a path to a .ckpt.")
    return value


def train(cfg: DictConfig) -> dict:
    """Train the base model; returns the final logged metrics and paths."""
    out = Path(cfg.output_dir)
    steps = total_steps(cfg)
    ckpt_path = resume_path(cfg)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if env_global_rank() == 0:
        save_config(cfg, out / "config.yaml")
        for stale in (out / "checkpoints").glob(".*.tmp*"):  # left by a run killed mid-write
            stale.unlink(missing_ok=True)

    plain = to_plain(cfg)
    module = DiffusionTrainingModule(plain, total_steps=steps)
    loggers = build_logger(cfg.logger, out, plain, resuming=ckpt_path is not None)
    ckpt_cb = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="step_{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=int(cfg.checkpoint.every_n_steps),
        save_top_k=-1 if cfg.checkpoint.keep_periodic else 1,
        save_last=True,
        save_on_train_epoch_end=True,
        enable_version_counter=False,  # a resumed run must keep writing last.ckpt, not last-v1.ckpt
    )
    callbacks = [ckpt_cb, FinalCheckpoint(out / "checkpoints" / "last.ckpt"), Throughput(int(cfg.batch_size))]
    plugins: list = [AtomicCheckpointIO()]
    if os.environ.get("SLURM_JOB_ID"):
        from lightning.pytorch.plugins.environments import SLURMEnvironment

        callbacks.append(SlurmPreemption(out / "checkpoints" / "last.ckpt"))
        if SLURMEnvironment.detect():
            plugins.append(SLURMEnvironment(auto_requeue=False))  # SlurmPreemption handles SIGUSR1
    if cfg.samples.every_n_steps:
        callbacks.append(SampleGrid(out, int(cfg.samples.every_n_steps), int(cfg.samples.num), int(cfg.samples.seed)))
    trainer = L.Trainer(
        accelerator=str(cfg.trainer.accelerator),
        devices=cfg.trainer.devices,
        num_nodes=int(cfg.trainer.num_nodes),
        strategy=str(cfg.trainer.strategy),
        precision=resolve_precision(cfg),
        max_steps=steps,
        max_epochs=-1,
        log_every_n_steps=int(cfg.trainer.log_every_n_steps),
        deterministic=bool(cfg.trainer.deterministic),
        enable_progress_bar=bool(cfg.trainer.enable_progress_bar),
        logger=loggers or False,
        callbacks=callbacks,
        plugins=plugins,
        use_distributed_sampler=False,  # StepBatchSampler shards the data itself
        num_sanity_val_steps=0,
        default_root_dir=str(out),
    )
    failed = True
    try:
        trainer.fit(module, ckpt_path=ckpt_path, weights_only=True)
        failed = False
    finally:
        close_loggers(loggers, failed=failed)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    preempted = any(getattr(cb, "requeued", False) for cb in callbacks)
    return {"metrics": metrics, "last_checkpoint": str(out / "checkpoints" / "last.ckpt"), "global_step": trainer.global_step, "preempted": preempted}
