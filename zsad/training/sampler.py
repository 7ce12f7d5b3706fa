"""Data order as a pure function of (seed, global step): exact resume, disjoint shards per process."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler
from zsad.errors import ConfigError


class StepBatchSampler(Sampler[list[int]]):
    """Yields this process's part of the global batch for steps start_step … end_step−1.

    The global stream is the concatenation of per-epoch permutations of the dataset (epoch e shuffled
    with seed (seed, e)); global step s takes stream positions [s·B, (s+1)·B), and process r of W takes
    the r-th contiguous slice of B/W of them. Resuming at step s therefore sees exactly the batches an
    uninterrupted run would, and the W slices of one step are disjoint.
    """

    def __init__(self, dataset_len: int, global_batch: int, world_size: int, rank: int, seed: int, start_step: int, end_step: int):
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
        for step in range(self.start_step, self.end_step):
            yield self.indices_for_step(step)

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)
