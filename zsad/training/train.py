"""`zsad train`: wire config → data, model, Trainer, logger; run; always close the logger."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from zsad.config import ConfigError, save_config, to_plain
from zsad.config.checks import check_accelerator, check_output_dir, check_positive
from zsad.data import build_training_dataset
from zsad.training.callbacks import AtomicCheckpointIO, FinalCheckpoint, SampleGrid, SlurmPreemption, Throughput
from zsad.training.module import DiffusionTrainingModule
from zsad.utils.console import verbosity
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
        if not last.is_file():
            return None
        check_readable_checkpoint(last)
        return str(last)
    if not Path(value).is_file():
        raise ConfigError(f"resume={value}: no such checkpoint file. Use resume=auto, resume=never or a path to a .ckpt.")
    check_readable_checkpoint(Path(value))
    return value


def check_readable_checkpoint(path: Path) -> None:
    """A damaged checkpoint is an error naming it and the periodic checkpoints to resume from instead;
    never a silent fresh start that would overwrite the run's history."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
            raise ValueError("not a `zsad train` checkpoint")
    except Exception as err:  # noqa: BLE001 - any unreadable file
        others = sorted(p for p in path.parent.glob("step_*.ckpt") if p != path)
        hint = (f" Periodic checkpoints that can be used instead: {', '.join(p.name for p in others[-3:])} (resume={others[-1]})."
                if others else " There is no periodic checkpoint beside it; start afresh with resume=never (the old run's files are kept).")
        raise ConfigError(f"Cannot resume: {path} is damaged ({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}).{hint}") from None


def validate(cfg: DictConfig) -> None:
    """Domain checks and the training data, before any folder, W&B run or checkpoint exists."""
    check_positive(
        cfg,
        ["batch_size", "total_images", "trainer.max_steps", "trainer.num_nodes", "trainer.log_every_n_steps", "optim.lr",
         "checkpoint.every_n_steps", "data.image_size", "data.max_images", "ema.halflife_images"],
        allow_zero=["samples.every_n_steps", "samples.num", "samples.sampling_steps", "optim.warmup_images", "optim.grad_clip", "optim.weight_decay",
                    "data.num_workers"],
    )
    check_accelerator(cfg.trainer.accelerator)
    check_output_dir(cfg.output_dir)
    if str(cfg.resume) not in ("auto", "never") and not Path(str(cfg.resume)).is_file():
        raise ConfigError(f"resume={cfg.resume}: no such checkpoint file. Use resume=auto, resume=never or a path to a .ckpt.")
    dataset = build_training_dataset(OmegaConf.create(to_plain(cfg.data)))
    if len(dataset) == 0:
        raise ConfigError(f"The training set '{cfg.data.name}' ({cfg.data.split}) has no images. Check data.root, data.split and data.max_images.")


def train(cfg: DictConfig) -> dict:
    """Train the base model; returns the final logged metrics and paths."""
    out = Path(cfg.output_dir)
    validate(cfg)
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
    if bool(cfg.trainer.enable_progress_bar) and verbosity() > 0:
        import sys

        from lightning.pytorch.callbacks import TQDMProgressBar

        # In a log file every refresh is a new line of text: about 50 of them for the whole run.
        callbacks.append(TQDMProgressBar(refresh_rate=1 if sys.stdout.isatty() else max(1, steps // 50)))
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
        enable_progress_bar=bool(cfg.trainer.enable_progress_bar) and verbosity() > 0,
        enable_model_summary=verbosity() >= 2,  # the layer table is noise for most runs; -v shows it
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
