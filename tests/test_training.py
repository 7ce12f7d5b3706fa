"""Issue 2: training runs, logs to W&B offline, shards data across processes, resumes exactly, loads safely."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch
from conftest import REPO, SMOKE_TRAIN, ZSAD, cli_env, run_cli, run_inprocess

from zsad.utils.wandb_offline import find_offline_runs, logged_keys, read_offline_run


def test_smoke_training_outputs_and_wandb(smoke_run):
    assert (smoke_run / "config.yaml").is_file()
    ckpt = smoke_run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    state = torch.load(ckpt, weights_only=True)  # plain data only
    assert state["global_step"] == 20
    assert state["hyper_parameters"]["config"]["trainer"]["max_steps"] == 20

    runs = find_offline_runs(smoke_run)
    assert len(runs) == 1
    run = read_offline_run(runs[0])
    keys = logged_keys(run)
    assert {"train/loss", "train/lr", "train/images_per_sec", "train/images_seen", "train/grad_norm"} <= keys
    assert run["config"]["batch_size"] == 16 and run["config"]["model"]["unet"]["dim"] == 16
    assert run["exit_code"] == 0
    losses = [row["train/loss"] for row in run["history"] if "train/loss" in row]
    assert len(losses) >= 15
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.85 * first, f"loss did not fall: {first:.3f} -> {last:.3f}"


def test_resolved_config_is_written_and_reloadable(smoke_run):
    from zsad.config import load_config
    from zsad.config.schema import TrainConfig

    cfg = load_config(smoke_run / "config.yaml", [], TrainConfig)
    assert cfg.trainer.max_steps == 20 and cfg.data.name == "shapes" and cfg.model.diffusion.objective == "pred_noise"


def test_ddp_two_processes_disjoint_covering_shards(tmp_path):
    steps, batch = 16, 16  # 256 images seen; the shapes set has 512, so use a 256-image subset: one epoch
    run_cli(
        *SMOKE_TRAIN,
        f"trainer.max_steps={steps}",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "record_sample_indices=true",
        "data.max_images=256",
        "logger=csv",
        f"output_dir={tmp_path}",
        timeout=900,
    )
    seen = [[i for line in (tmp_path / "sample_indices" / f"rank{r}.jsonl").read_text().splitlines() for i in json.loads(line)["indices"]] for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == steps * batch // 2
    assert not set(seen[0]) & set(seen[1]), "the two processes saw overlapping images"
    assert sorted(seen[0] + seen[1]) == list(range(256)), "one epoch over 2 processes must cover the set once"
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == steps


def test_kill_and_resume_gives_identical_weights(tmp_path):
    args = [*SMOKE_TRAIN, "trainer.max_steps=40", "checkpoint.every_n_steps=10", "logger=csv"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    run_cli(*args, f"output_dir={ref}")

    proc = subprocess.Popen([*ZSAD, *args, f"output_dir={killed}"], cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step_0000020.ckpt").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    # Killed at step 20 or soon after; a slow poll on a loaded machine may see the step-30 checkpoint too.
    # What matters is that the run was cut short and resumes exactly.
    assert partial in (10, 20, 30), partial

    run_cli(*args, "resume=auto", f"output_dir={killed}")
    a = torch.load(ref / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 40
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"{key} differs after resume"
    assert not list((killed / "checkpoints").glob(".*.tmp*")), "stale temporary checkpoint left behind"


def test_checkpoint_loads_weights_only_and_code_pickles_are_refused(smoke_checkpoint, tmp_path):
    import zsad
    from zsad.errors import BackboneLoadError

    backbone = zsad.load_backbone(smoke_checkpoint)
    assert backbone.num_timesteps == 1000 and backbone.image_size == 16
    assert backbone.alphas_cumprod.dtype == torch.float64

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Evil()}, evil)
    with pytest.raises(BackboneLoadError, match="weights_only=True"):
        zsad.load_backbone(evil)
    assert not marker.exists()

    not_ckpt = tmp_path / "notes.ckpt"
    not_ckpt.write_text("hello")
    with pytest.raises(BackboneLoadError, match="not a PyTorch checkpoint"):
        zsad.load_backbone(not_ckpt)
    with pytest.raises(BackboneLoadError, match="does not exist"):
        zsad.load_backbone(tmp_path / "missing.ckpt")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.max_step=5"], "Unknown config key 'trainer.max_step'.*Did you mean 'trainer.max_steps'"),
        (["trainer.max_steps=abc"], "Wrong value for 'trainer.max_steps'"),
        (["data.name=celeba", "data.root=/nonexistent/celeba"], "CelebA not found under '/nonexistent/celeba'.*download"),
    ],
)
def test_user_errors_are_clear(tmp_path, overrides, message):
    import re

    proc = run_inprocess(*SMOKE_TRAIN, *overrides, "logger=none", f"output_dir={tmp_path}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert re.search(message, proc.stderr, re.S), proc.stderr[-2000:]


def _folder_with_a_broken_png(tmp_path, good: int, broken: str):
    """`good` small valid PNGs and one file with a PNG signature and no image data."""
    import numpy as np
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(good):
        Image.fromarray(np.full((20, 20, 3), 30 * i, np.uint8)).save(images / f"ok_{i}.png")
    (images / broken).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return images


def test_corrupt_image_error_names_the_file(tmp_path):
    images = _folder_with_a_broken_png(tmp_path, 6, "broken.png")
    common = [*SMOKE_TRAIN, "data.name=imagefolder", f"data.root={images}", "trainer.max_steps=2", "batch_size=7", "logger=none"]
    proc = run_cli(*common, f"output_dir={tmp_path / 'a'}", check=False)
    assert proc.returncode == 2 and "broken.png" in proc.stderr and "data.skip_corrupt=true" in proc.stderr, proc.stderr[-2000:]
    # Opting in skips the file with a warning and trains on the six good images.
    proc = run_cli(*common, "batch_size=6", "data.skip_corrupt=true", f"output_dir={tmp_path / 'b'}")
    assert "skipped 1 unreadable image" in proc.stderr


def test_wandb_run_is_closed_as_failed_when_training_fails(tmp_path):
    images = _folder_with_a_broken_png(tmp_path, 7, "zz_broken.png")
    out = tmp_path / "run"
    proc = run_cli(*SMOKE_TRAIN, "data.name=imagefolder", f"data.root={images}", "batch_size=8", "trainer.max_steps=3", f"output_dir={out}", check=False)
    assert proc.returncode == 2 and "zz_broken.png" in proc.stderr
    runs = [read_offline_run(p) for p in find_offline_runs(out)]
    assert len(runs) == 1 and runs[0]["exit_code"] == 1, "the W&B run must be finished, and marked failed"
