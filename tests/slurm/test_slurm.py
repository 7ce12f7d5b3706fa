"""Issue 6: the real SLURM templates on a one-node Slurm cluster on localhost (CPU override: 2 tasks →
2 DDP processes on gloo, smoke config). Run by `make test-slurm` (and .ci/run)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from cluster import LocalSlurm, try_install  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slurm
CPU_OVERRIDE = ["--partition=debug", "--account=ci", "--gpus-per-node=0", "--cpus-per-task=1", "--ntasks-per-node=2", "--mem-per-cpu=1G"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = try_install()
    if reason:
        print(f"SKIPPING Slurm tests: {reason}")
        pytest.skip(reason)
    with LocalSlurm(tmp_path_factory.mktemp("slurm")) as c:
        yield c


def _env(**kw) -> dict:
    env = {"ZSAD_ACCELERATOR": "cpu", "ZSAD_PYTHON": sys.executable, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.update(kw)
    return env


def _steps(out: Path, rank: int) -> list[tuple[int, int]]:
    lines = (out / "sample_indices" / f"rank{rank}.jsonl").read_text().splitlines()
    return [(json.loads(line)["step"], json.loads(line)["restart"]) for line in lines]


@pytest.fixture(scope="module")
def trained(cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("slurm_train")
    log = out / "job.out"
    job = cluster.sbatch(
        REPO / "experiments/slurm/train_celeba.sbatch", *CPU_OVERRIDE, f"--output={log}", cwd=REPO,
        env=_env(ZSAD_CONFIG="conf/train/smoke.yaml", ZSAD_OUTPUT_DIR=str(out), ZSAD_DATA_ROOT="unused",
                 ZSAD_OVERRIDES="trainer.max_steps=12 checkpoint.every_n_steps=6 record_sample_indices=true trainer.enable_progress_bar=false"),
    )
    info = cluster.wait(job, timeout=600)
    return out, log, info


def test_training_job_runs_two_ranks_in_one_process_group(trained):
    out, log, info = trained
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text[-3000:]
    assert "All distributed processes registered. Starting with 2 processes" in text
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in text and "GLOBAL_RANK: 1, MEMBER: 2/2" in text
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["last.ckpt", "step_0000006.ckpt", "step_0000012.ckpt"], ckpts
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 12
    r0, r1 = _steps(out, 0), _steps(out, 1)
    assert [s for s, _ in r0] == [s for s, _ in r1] == list(range(12))
    seen = [json.loads(line)["indices"] for r in (0, 1) for line in (out / "sample_indices" / f"rank{r}.jsonl").read_text().splitlines()]
    assert len({i for batch in seen for i in batch}) == 12 * 16, "the two ranks' shards must be disjoint"


def test_evaluation_job_writes_the_results_table(cluster, trained, tmp_path):
    ckpt = trained[0] / "checkpoints" / "last.ckpt"
    log = tmp_path / "eval.out"
    job = cluster.sbatch(
        REPO / "experiments/slurm/eval_all.sbatch", *CPU_OVERRIDE, f"--output={log}", cwd=REPO,
        env=_env(ZSAD_CONFIG="conf/eval/smoke.yaml", ZSAD_CHECKPOINT=str(ckpt), ZSAD_OUTPUT_DIR=str(tmp_path / "eval"),
                 ZSAD_OVERRIDES='scorers=[{"name":"diffpath_v2","options":{"steps":4}}] trainer.enable_progress_bar=false'),
    )
    info = cluster.wait(job, timeout=600)
    assert info["JobState"] == "COMPLETED", log.read_text()[-3000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert len(results["rows"]) == 4 and (tmp_path / "eval" / "results.md").is_file()
    assert "Starting with 2 processes" in log.read_text()


def test_preempted_job_requeues_itself_and_resumes_exactly(cluster, tmp_path):
    out, log = tmp_path / "train", tmp_path / "preempt.out"
    total = 120
    job = cluster.sbatch(
        REPO / "experiments/slurm/train_celeba.sbatch", *CPU_OVERRIDE, f"--output={log}", cwd=REPO,
        env=_env(ZSAD_CONFIG="conf/train/smoke.yaml", ZSAD_OUTPUT_DIR=str(out), ZSAD_DATA_ROOT="unused",
                 ZSAD_OVERRIDES=f"trainer.max_steps={total} checkpoint.every_n_steps=40 record_sample_indices=true trainer.enable_progress_bar=false"),
    )
    steps_file = out / "sample_indices" / "rank0.jsonl"
    deadline = time.time() + 300
    while not steps_file.exists() or len(steps_file.read_text().splitlines()) < 25:
        assert time.time() < deadline and cluster.job(job)["JobState"] in ("PENDING", "RUNNING", "CONFIGURING"), log.read_text()[-3000:]
        time.sleep(0.2)
    # What Slurm sends before the time limit (#SBATCH --signal=USR1@300), sent now.
    subprocess.run(["scancel", "--signal=USR1", str(job)], env=cluster.env, check=True)
    deadline = time.time() + 120
    while cluster.job(job).get("Restarts", "0") == "0" or cluster.job(job)["JobState"] == "COMPLETING":
        assert time.time() < deadline, f"job was not requeued: {cluster.job(job)}\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    # Slurm holds a requeued job for ~2 minutes (BeginTime); release it now instead of waiting.
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=cluster.env, capture_output=True)
    info = cluster.wait(job, timeout=600)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", text[-4000:]

    # Assert on what Slurm and zsad record (restarts, per-step logs, checkpoints, W&B run id), never on a
    # print that races Slurm's kill of the step (`scontrol requeue …: exit 0` may never reach the log).
    first_attempt = [s for s, r in _steps(out, 0) if r == 0]
    stop = max(first_attempt) + 1
    assert 25 <= stop < total, text[-4000:]
    assert f"job {job} restart 1" in text and "Restoring states from the checkpoint path" in text
    for rank in (0, 1):
        steps = _steps(out, rank)
        assert [s for s, r in steps if r == 0] == list(range(stop)), "first attempt: steps 0..stop-1, nothing after its checkpoint"
        assert [s for s, r in steps if r == 1] == list(range(stop, total)), "second attempt resumes at the checkpoint step"
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == total
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["last.ckpt", "step_0000040.ckpt", "step_0000080.ckpt", "step_0000120.ckpt"], ckpts
    run_ids = {p.name.rsplit("-", 1)[-1] for p in (out / "wandb").glob("offline-run-*")}
    assert len(list((out / "wandb").glob("offline-run-*"))) == 2 and len(run_ids) == 1, "the requeued job must continue the same W&B run"
