"""Domain checks run before a command creates anything (folders, W&B runs, checkpoints): a failed check
leaves nothing behind and says what to change."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig, OmegaConf

from zsad.errors import ConfigError


def _value(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, default=None)


def check_positive(cfg: DictConfig, keys: Iterable[str], allow_zero: Iterable[str] = ()) -> None:
    """Each key (dotted) is a number > 0 (≥ 0 for those in `allow_zero`); None means 'not set' and passes."""
    zero_ok = set(allow_zero)
    for key in [*keys, *zero_ok]:
        value = _value(cfg, key)
        if value is None or isinstance(value, bool):
            continue
        if not isinstance(value, (int, float)):
            continue
        if value < 0 or (value == 0 and key not in zero_ok):
            need = "≥ 0" if key in zero_ok else "> 0"
            raise ConfigError(f"{key}={value} is impossible: it must be {need}. Set {key} to a {'non-negative' if key in zero_ok else 'positive'} number.")


def check_fraction(cfg: DictConfig, key: str, low: float = 0.0, high: float = 1.0) -> None:
    value = _value(cfg, key)
    if value is not None and not low < float(value) < high:
        raise ConfigError(f"{key}={value} must lie strictly between {low} and {high}.")


def check_accelerator(accelerator: str) -> None:
    """A GPU preset on a machine without one fails here, before Lightning or any dataset is touched."""
    import torch

    accelerator = str(accelerator)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible on this machine. "
            "Pass trainer.accelerator=cpu (or auto) to run on the CPU, or run on a GPU node."
        )
    if accelerator == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("trainer.accelerator=mps but Apple's MPS backend is not available here. Use trainer.accelerator=cpu.")
    if accelerator not in ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu"):
        raise ConfigError(f"trainer.accelerator={accelerator} is not one of auto, cpu, gpu, cuda, mps.")


def check_output_dir(path: str | Path, key: str = "output_dir") -> None:
    """The folder can be created and written (not an existing file, not read-only), without creating it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={path} is an existing file, not a folder. Choose another {key}.")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path}: cannot write under {parent}. Choose a {key} in a folder you can write to.")
