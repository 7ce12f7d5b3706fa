"""SIGTERM (`docker stop`, systemd, Kubernetes) ends a zsad run outside Slurm: exit 143 within seconds, one
line on stderr, no file a later run would trust; under Slurm nothing changes (zsad/utils/signals.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, SMOKE_TRAIN, ZSAD, cli_env

from zsad.utils.signals import EXIT_CODE, Terminated, sigterm_ends_run, under_slurm

STOP_WITHIN_S = 10  # measured 1.3–2.0 s on 2 busy CPU cores; the fit's extraction alone would run for minutes


def test_sigterm_raises_terminated_and_the_previous_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_ends_run(enabled=True) as state:
        assert state.installed and not state.received
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs at the next bytecode; never reached
        assert state.received
    assert signal.getsignal(signal.SIGTERM) is before


def test_nothing_is_installed_under_slurm(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "train_celeba")
    assert under_slurm()
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_ends_run() as state:
        assert not state.installed and signal.getsignal(signal.SIGTERM) is before
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # `srun --pty bash`: not a Slurm job for Lightning, so SIGTERM ends the run
    assert not under_slurm()
    monkeypatch.delenv("SLURM_JOB_ID")
    assert not under_slurm()


def test_a_lightning_predict_loop_stops_at_sigterm():
    """Lightning's connector swaps in its own SIGTERM handler during predict and never checks it there; it calls
    the handler that was installed before its own, so ours still stops the loop, and ours is back afterwards."""
    import lightning as L

    class SelfTerminating(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)
            self.seen = 0

        def predict_step(self, batch, batch_idx):
            self.seen += 1
            if batch_idx == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return self.layer(batch)

    module = SelfTerminating()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    loader = torch.utils.data.DataLoader(torch.zeros(50, 1), batch_size=1)
    with sigterm_ends_run(enabled=True) as state:
        ours = signal.getsignal(signal.SIGTERM)
        with pytest.raises(Terminated):
            trainer.predict(module, dataloaders=loader, return_predictions=False)
        assert state.received and module.seen == 3 and trainer.received_sigterm  # Lightning's notifier ran too, then ours
        assert signal.getsignal(signal.SIGTERM) is ours


# --------------------------------------------------------------------------- the real CLI in a subprocess
def _terminate_when(cmd: list[str], ready, timeout: float = 180) -> tuple[int, float, str]:
    """Start `zsad CMD`, send SIGTERM once `ready()` holds; (exit code, seconds from SIGTERM to exit, stderr)."""
    proc = subprocess.Popen([*ZSAD, *cmd], cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + timeout
        while not ready():
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise AssertionError(f"zsad {cmd[0]} ended (or stalled) before it could be stopped:\n{proc.communicate()[1][-3000:]}")
            time.sleep(0.05)
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        return proc.returncode, time.time() - sent, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _first_shard(root: Path):
    return lambda: next(root.rglob("part-*.pt"), None) is not None


def _assert_stopped(code: int, seconds: float, err: str, command: str) -> None:
    assert code == EXIT_CODE, f"exit {code}, expected {EXIT_CODE}:\n{err[-3000:]}"
    assert seconds < STOP_WITHIN_S, f"zsad {command} took {seconds:.1f} s to stop"
    lines = [line for line in err.splitlines() if "stopped by SIGTERM" in line]
    assert len(lines) == 1 and lines[0].startswith(f"zsad {command}: stopped by SIGTERM;"), err[-3000:]
    assert "Traceback" not in err, err[-3000:]


def _assert_cache_trustworthy(cache: Path) -> None:
    """Every shard is whole (it loads); an entry is complete (meta.json) only with its full features.npz; and the
    entry being extracted at the stop is not marked complete."""
    import json

    import numpy as np

    shards = list(cache.rglob("part-*.pt"))
    assert shards, "no shard: the run was not inside extraction"
    for shard in shards:
        assert set(torch.load(shard, weights_only=True)) == {"index", "seed", "features"}
    assert not any((s.parent.parent / "meta.json").exists() for s in shards)
    for meta in cache.rglob("meta.json"):
        with np.load(meta.parent / "features.npz") as data:
            assert data["features"].shape[0] == json.loads(meta.read_text())["n"]


@pytest.fixture(scope="module")
def stopped_training(tmp_path_factory):
    """`zsad train` on the smoke config, stopped by SIGTERM once its first checkpoint (step 1) is written, often
    while it writes the next one."""
    out = tmp_path_factory.mktemp("train")
    cmd = [*SMOKE_TRAIN, "trainer.max_steps=100000", "checkpoint.every_n_steps=1", "logger=none", f"output_dir={out}"]
    return out, _terminate_when(cmd, lambda: (out / "checkpoints" / "last.ckpt").exists())


def test_train_stops_at_sigterm_and_keeps_its_checkpoints(stopped_training):
    out, (code, seconds, err) = stopped_training
    _assert_stopped(code, seconds, err, "train")
    assert "resumes" in err
    ckpts = out / "checkpoints"
    assert not list(ckpts.glob(".*.tmp*")), "a temporary checkpoint was left behind"
    step = torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"]
    assert step >= 1 and (ckpts / f"step_{step:07d}.ckpt").is_file()


def test_fit_stops_during_extraction_and_writes_no_detector(stopped_training, tmp_path):
    from PIL import Image

    from zsad.data import make_builtin

    normal = tmp_path / "normal"
    normal.mkdir()
    for i, a in enumerate(make_builtin("clouds", "train", 300)):
        Image.fromarray(a).save(normal / f"n_{i:04d}.png")
    out, cache = tmp_path / "det", tmp_path / "cache"
    cmd = ["fit", str(normal), "-o", str(out), "--backbone", str(stopped_training[0] / "checkpoints" / "last.ckpt"), "--working-size", "16",
           "--scorer", "diffpath_v2", "--device", "cpu", "--batch-size", "2", "--cache-dir", str(cache)]
    code, seconds, err = _terminate_when(cmd, _first_shard(cache))
    _assert_stopped(code, seconds, err, "fit")
    assert not out.exists(), "an interrupted fit must not leave a detector folder"
    _assert_cache_trustworthy(cache)


def test_evaluate_stops_during_extraction_and_writes_no_results(stopped_training, tmp_path):
    out = tmp_path / "eval"
    cmd = ["evaluate", "-c", "conf/eval/smoke.yaml", f"backbone.path={stopped_training[0] / 'checkpoints' / 'last.ckpt'}", f"output_dir={out}",
           "logger=none", "batch_size=4", 'scorers=[{"name":"diffpath_v2","options":{"steps":4}}]']
    code, seconds, err = _terminate_when(cmd, _first_shard(out / "feature_cache"))
    _assert_stopped(code, seconds, err, "evaluate")
    assert not [p.name for p in out.glob("results.*")] and not (out / "detectors").exists()
    _assert_cache_trustworthy(out / "feature_cache")
