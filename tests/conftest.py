"""Shared helpers: run the real CLI in a subprocess (as users do), offline W&B, small configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# Reference test vectors of the improved-diffusion format, produced by the reference code (see the
# README there); part of the repository, so the parity tests run (and fail, never skip) in every clone.
FIXTURES = REPO / "tests" / "fixtures" / "improved_diffusion"
ZSAD = [sys.executable, "-m", "zsad.cli"]


def cli_env() -> dict:
    env = dict(os.environ)
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", PYTHONHASHSEED="0", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"))
    env.pop("SLURM_JOB_ID", None)  # Lightning would try to use SLURM's environment inside a CI job
    env.pop("SLURM_NTASKS", None)
    return env


def run_cli(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python -m zsad.cli ARGS` from the repository root."""
    proc = subprocess.run([*ZSAD, *args], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"zsad {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def run_inprocess(*args: str) -> subprocess.CompletedProcess:
    """`zsad ARGS` in this process (for commands that fail before any work: seconds, not a fresh import)."""
    import contextlib
    import io

    from zsad.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse: --help, --version, usage errors
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(old)
    return subprocess.CompletedProcess(["zsad", *args], code, out.getvalue(), err.getvalue())


SMOKE_TRAIN = ["train", "-c", "conf/train/smoke.yaml", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """One 20-step smoke training run shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("smoke_train")
    run_cli(*SMOKE_TRAIN, "trainer.max_steps=20", "trainer.log_every_n_steps=1", f"output_dir={out}")
    return out


@pytest.fixture(scope="session")
def smoke_checkpoint(smoke_run) -> Path:
    return smoke_run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """The smoke model trained for 200 steps (about half a minute): enough to tell smooth images from noise."""
    out = tmp_path_factory.mktemp("trained")
    run_cli(*SMOKE_TRAIN, "trainer.max_steps=200", "checkpoint.every_n_steps=1000", "logger=none", f"output_dir={out}")
    return out / "checkpoints" / "last.ckpt"
