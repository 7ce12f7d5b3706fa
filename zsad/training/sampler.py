"""Data order as a pure function of (seed, global step): exact resume, disjoint shards per process."""

from __future__ import annotations

from typing import Callable, Iterator, Union

import torch
from torch.utils.data import DataLoader, Sampler

from zsad.errors import ConfigError


class StepBatchSampler(Sampler[list[int]]):
    """Yields this process's part of the global batch for steps start_step … end_step−1.

    `start_step` may be a callable, read when iteration starts (the trainer's restored global step);
    `len()` is always `end_step`, so a resumed Lightning epoch that already counts `start_step`
    batches ends exactly at `end_step`.

    The global stream is the concatenation of per-epoch permutations of the dataset (epoch e shuffled
    with seed (seed, e)); global step s takes stream positions [s·B, (s+1)·B), and process r of W takes
    the r-th contiguous slice of B/W of them. Resuming at step s therefore sees exactly the batches an
    uninterrupted run would, and the W slices of one step are disjoint.
    """

    def __init__(
        self,
        dataset_len: int,
        global_batch: int,
        world_size: int,
        rank: int,
        seed: int,
        start_step: Union[int, Callable[[], int]],
        end_step: int,
    ):
        if global_batch % world_size:
            raise ConfigError(
                f"batch_size {global_batch} (global) is not divisible by the {world_size} processes; "
                "choose a batch_size that is a multiple of devices × num_nodes."
            )
        if dataset_len <= 0:
            raise ValueError("The training dataset is empty.")
        self.n, self.B, self.W, self.r = dataset_len, global_batch, world_size, rank
        self.per_rank = global_batch // world_size
        self.seed, self.start_step, self.end_step = seed, start_step, end_step
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def indices_for_step(self, step: int) -> list[int]:
        first = step * self.B + self.r * self.per_rank
        return [int(self._perm(p // self.n)[p % self.n]) for p in range(first, first + self.per_rank)]

    def __iter__(self) -> Iterator[list[int]]:
        start = self.start_step() if callable(self.start_step) else self.start_step
        for step in range(start, self.end_step):
            yield self.indices_for_step(step)

    def __len__(self) -> int:
        return self.end_step


class StepIndexedDataLoader(DataLoader):
    """A DataLoader over a StepBatchSampler. Its position is the trainer's global step, so it is
    resumable by construction; the (empty) state_dict tells Lightning so."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass
