"""Process rank from the environment, before Lightning has set anything up."""

from __future__ import annotations

import os


def env_global_rank() -> int:
    """RANK (torchrun, Lightning's launcher), else SLURM_PROCID (srun), else LOCAL_RANK; 0 when alone."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0
