"""What a new user meets: validated configs that leave nothing behind, clear errors for damaged or full
storage, the CLI's help, version and examples, readable pictures."""

from __future__ import annotations

import errno
import re

import numpy as np
import pytest
import torch
from conftest import SMOKE_TRAIN, run_cli, run_inprocess

SMOKE_EVAL = ["evaluate", "-c", "conf/eval/smoke.yaml"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["batch_size=-4"], r"batch_size=-4 is impossible: it must be > 0"),
        (["data.options.count=0"], r"training set 'shapes' \(train\) has no images"),
        (["trainer.accelerator=gpu"], r"trainer.accelerator=gpu but no CUDA GPU is visible.*trainer.accelerator=cpu"),
        (["optim.lr=0"], r"optim.lr=0.0 is impossible"),
        (["checkpoint.every_n_steps=0"], r"checkpoint.every_n_steps=0 is impossible"),
    ],
)
def test_impossible_training_configs_fail_first_and_leave_nothing(tmp_path, overrides, message):
    out = tmp_path / "run"
    proc = run_inprocess(*SMOKE_TRAIN, *overrides, f"output_dir={out}")  # W&B logger on: nothing may start
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert re.search(message, proc.stderr), proc.stderr[-2000:]
    assert not out.exists(), "a failed validation must not create the output folder, a W&B run or a checkpoint"


def test_output_path_that_is_a_file(tmp_path):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    proc = run_inprocess(*SMOKE_TRAIN, f"output_dir={target}")
    assert proc.returncode == 2 and "is an existing file, not a folder" in proc.stderr
    assert target.read_text() == "not a folder"


def test_yaml_syntax_error_names_the_file(tmp_path):
    bad = tmp_path / "conf" / "train" / "bad.yaml"
    bad.parent.mkdir(parents=True)
    bad.write_text("batch_size: 16\n  total_images: [1, 2\n")
    proc = run_inprocess("train", "-c", str(bad))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{bad} is not valid YAML" in proc.stderr


def test_damaged_last_checkpoint_names_the_file_and_the_alternatives(tmp_path):
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "last.ckpt").write_bytes(b"PK\x03\x04 truncated in the middle of a write")
    (ckpts / "step_0000010.ckpt").write_bytes(b"x")
    proc = run_inprocess(*SMOKE_TRAIN, f"output_dir={out}", "logger=none")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"Cannot resume: {ckpts / 'last.ckpt'} is damaged" in proc.stderr
    assert "step_0000010.ckpt" in proc.stderr and "resume=" in proc.stderr
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step_0000010.ckpt"], "nothing overwritten"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["batch_size=0"], r"batch_size=0 is impossible"),
        (["bootstrap=-1"], r"bootstrap=-1 is impossible: it must be ≥ 0"),
        (["trainer.accelerator=gpu"], r"no CUDA GPU is visible"),
        (["max_fit_images=0"], r"max_fit_images=0 is impossible"),
    ],
)
def test_impossible_evaluation_configs_fail_first_and_leave_nothing(smoke_checkpoint, tmp_path, overrides, message):
    out = tmp_path / "eval"
    proc = run_inprocess(*SMOKE_EVAL, f"backbone.path={smoke_checkpoint}", f"output_dir={out}", *overrides)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert re.search(message, proc.stderr), proc.stderr[-2000:]
    assert not out.exists()


def test_full_disk_while_writing_a_checkpoint_is_one_clear_error(tmp_path, monkeypatch):
    from zsad.training.callbacks import AtomicCheckpointIO
    from zsad.utils.files import DiskFullError

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(10)}, "global_step": 10}, path)
    before = path.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"\0" * 1000)  # part of the file reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DiskFullError, match=rf"No space left on the device while writing {re.escape(str(path))}: it needs about 0.0 MiB"):
        io.save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "global_step": 20}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"], "the partial file is removed"
    assert path.read_bytes() == before, "the previous checkpoint is intact"


def test_full_disk_while_writing_a_cache_entry_or_results(tmp_path, monkeypatch):
    from zsad.evaluation.report import write_results
    from zsad.utils.files import DiskFullError

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    from helpers import extraction_setup

    from zsad.scoring.extraction import extract_features
    from zsad.scoring.feature_cache import FeatureCache

    backbone, dataset, scorer, kw = extraction_setup(count=4)
    with pytest.raises(DiskFullError, match="while writing .*features.npz"):
        extract_features(backbone, scorer, dataset, FeatureCache(tmp_path / "cache"), **kw)
    assert not list((tmp_path / "cache").rglob(".features*")), "no partial cache file"
    monkeypatch.setattr("builtins.open", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(DiskFullError, match="results.json"):
        write_results(tmp_path / "out", [], [], {})


def test_cli_version_help_examples_and_score_without_config():
    from zsad import __version__

    assert run_cli("--version").stdout.strip() == f"zsad {__version__}"  # once as a real process
    for command in ("train", "evaluate", "score", "demo", "dashboard"):
        text = run_inprocess(command, "--help").stdout
        assert "example: zsad " + command in text, command
        assert "--verbose" in text and "--quiet" in text, command
    demo = run_inprocess("demo", "--help").stdout
    assert "conf/demo" not in demo and "train.KEY=VALUE" in demo and "about 2 minutes" in demo


def test_histogram_axis_follows_the_score_span():
    from zsad.evaluation.report import score_axis

    assert score_axis(np.array([10.0, 12, 15, 20])) == "linear"
    assert score_axis(np.r_[np.linspace(5, 9, 50), [900.0, 5000.0]]) == "log"
    assert score_axis(np.r_[np.linspace(-3, -1, 50), [2000.0]]) == "symlog"
