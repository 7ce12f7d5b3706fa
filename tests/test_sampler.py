"""The step-indexed sampler: disjoint shards, full coverage per epoch, resume equals no interruption."""

from zsad.training.sampler import StepBatchSampler


def test_shards_disjoint_and_cover_each_epoch():
    n, B, W = 48, 12, 3
    per_step = {}
    for r in range(W):
        for step, idx in enumerate(StepBatchSampler(n, B, W, r, seed=5, start_step=0, end_step=8)):
            per_step.setdefault(step, []).append(idx)
    for shards in per_step.values():
        flat = [i for s in shards for i in s]
        assert len(flat) == len(set(flat)) == B
    epoch0 = [i for step in range(4) for s in per_step[step] for i in s]
    assert sorted(epoch0) == list(range(n))
    epoch1 = [i for step in range(4, 8) for s in per_step[step] for i in s]
    assert sorted(epoch1) == list(range(n)) and epoch1 != epoch0


def test_resume_continues_the_same_stream():
    full = list(StepBatchSampler(50, 8, 1, 0, seed=1, start_step=0, end_step=20))
    resumed = list(StepBatchSampler(50, 8, 1, 0, seed=1, start_step=lambda: 13, end_step=20))
    assert resumed == full[13:]
    assert len(StepBatchSampler(50, 8, 1, 0, seed=1, start_step=13, end_step=20)) == 20


def test_batch_must_split_evenly():
    import pytest

    from zsad.errors import ConfigError

    with pytest.raises(ConfigError, match="multiple of devices"):
        StepBatchSampler(10, 7, 2, 0, 0, 0, 1)
