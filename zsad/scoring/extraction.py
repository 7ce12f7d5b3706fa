"""Feature extraction at scale: Lightning `predict` over any number of devices, gathered by image index,
through the on-disk cache of `zsad.scoring.feature_cache`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Sampler, Subset

from zsad.data.base import ImageDataset
from zsad.diffusion.backbone import Backbone
from zsad.errors import FeatureError
from zsad.scoring.feature_cache import FeatureCache, FeatureSet, cache_key
from zsad.scoring.recipe import FeatureRecipe
from zsad.scoring.scorers import Scorer, image_seeds
from zsad.utils.console import say
from zsad.utils.files import disk_full_guard
from zsad.utils.progress import progress_bar


class OODEvaluationModule(L.LightningModule):
    """predict_step: (images, indices) → {"index", "seed", "features"}. Noise is seeded by a hash of each
    image's pixels, so results do not depend on which process, batch or dataset an image lands in."""

    def __init__(self, backbone: Backbone, scorer: Scorer, dataset_name: str, split: str, seed: int):
        super().__init__()
        self.backbone = backbone
        self.scorer = scorer
        self.dataset_name, self.split, self.seed = dataset_name, split, seed

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        images, indices = batch
        ids = image_seeds(self.seed, images)
        try:
            features = self.scorer(self.backbone, images, ids)
        except FeatureError as err:
            raise FeatureError(f"{self.dataset_name}/{self.split}, image indices {indices.tolist()[:20]}: {err}") from None
        return {"index": indices.cpu().to(torch.int64), "seed": ids, "features": features}


class ShardSampler(Sampler[int]):
    """Positions rank, rank+W, rank+2W, …: every image exactly once over W processes, no padding."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.positions = list(range(rank, n, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.positions)

    def __len__(self) -> int:
        return len(self.positions)


class ShardWriter(BasePredictionWriter):
    """Writes each predicted batch atomically to `shard_dir`, so an interrupted extraction resumes."""

    def __init__(self, shard_dir: Path):
        super().__init__(write_interval="batch")
        self.shard_dir = shard_dir
        self.nonce = run_nonce()

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        name = f"part-{self.nonce}-r{trainer.global_rank}-b{batch_idx:06d}.pt"
        tmp = self.shard_dir / f".{name}.tmp"
        for attempt in range(5):
            # A concurrent run that completes this entry first removes shards/ (its content is then unused).
            try:
                self.shard_dir.mkdir(parents=True, exist_ok=True)
                with disk_full_guard(self.shard_dir / name, int(prediction["features"].nbytes) * 2, partial=[tmp]):
                    torch.save({k: prediction[k] for k in ("index", "seed", "features")}, tmp)
                    os.replace(tmp, self.shard_dir / name)
                return
            except (FileNotFoundError, RuntimeError):
                if attempt == 4:
                    raise


class ExtractionProgress(L.Callback):
    """One bar per extraction on rank 0: images done (over all processes), images/s, ETA."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self._bar, self._cm = total, desc, None, None

    def on_predict_start(self, trainer, pl_module) -> None:
        self._cm = progress_bar(self.total, self.desc)
        self._bar = self._cm.__enter__()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._bar.update(min(len(batch[1]) * trainer.world_size, self.total - self._bar.n))

    def on_predict_end(self, trainer, pl_module) -> None:
        self._cm.__exit__(None, None, None)


def configure_precision(allow_tf32: bool = False) -> None:
    """Full float32 unless asked: PyTorch lets cuDNN use TF32 by default, which changes ε̂ at ~1e-3;
    and no cuDNN autotuning, so every call of one shape runs the same kernels."""
    torch.backends.cudnn.allow_tf32 = bool(allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = bool(allow_tf32)
    torch.backends.cudnn.benchmark = False


def device_for(accelerator: str) -> str:
    """The device kind feature extraction runs on for a Lightning `accelerator` setting (auto: a GPU if any)."""
    accelerator = str(accelerator)
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if accelerator == "gpu" else accelerator


def run_nonce() -> str:
    """One id shared by all processes of this run (set before Lightning or srun starts them), so that
    every process agrees on which shards came from an earlier, interrupted run."""
    if "ZSAD_RUN_NONCE" not in os.environ:
        slurm = os.environ.get("SLURM_JOB_ID")
        os.environ["ZSAD_RUN_NONCE"] = f"s{slurm}.{os.environ.get('SLURM_RESTART_COUNT', '0')}" if slurm else f"t{time.time_ns()}.{os.getpid()}"
    return os.environ["ZSAD_RUN_NONCE"]


def _barrier(trainer: Optional[L.Trainer]) -> None:
    if trainer is not None and trainer.world_size > 1:
        trainer.strategy.barrier()


def extract_features(
    backbone: Backbone,
    scorer: Scorer,
    dataset: ImageDataset,
    cache: FeatureCache,
    recipe: FeatureRecipe,
    trainer_kwargs: dict,
    batch_size: int,
    num_workers: int,
    log: Callable[[str], None] = say,
) -> Optional[FeatureSet]:
    """Features of every image of `dataset` made by `recipe` (from cache when complete). None on non-zero ranks."""
    key = cache_key(recipe, dataset)
    folder = cache.folder(scorer, dataset, key)
    cached = cache.load(folder)
    if cached is not None:
        log(f"[cache] {scorer.name} features of {dataset.name}/{dataset.split} ({len(cached.indices)} images): {folder}")
        return cached
    shard_dir = folder / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    # Shards of other runs (interrupted, or running now on the same cache): every process of this run
    # sees the same set, whatever the others have already written in this run.
    done = set(cache.read_shards(shard_dir, exclude_nonce=run_nonce())[0].tolist())
    positions = [p for p, i in enumerate(dataset.indices) if i not in done]
    todo = Subset(dataset, positions)
    desc = f"[extract] {scorer.name} {dataset.name}/{dataset.split}"
    callbacks = [ShardWriter(shard_dir), ExtractionProgress(len(positions), desc)]
    trainer_kwargs = {**trainer_kwargs, "enable_progress_bar": False, "enable_model_summary": False}  # our own bar
    trainer = L.Trainer(logger=False, callbacks=callbacks, use_distributed_sampler=False, **trainer_kwargs)
    if positions:
        resumed = f", resuming: {len(done)} already done" if len(done) else ""
        log(f"[extract] {scorer.name} features of {dataset.name}/{dataset.split}: {len(positions)} images{resumed}")
        loader = DataLoader(todo, batch_size=batch_size, sampler=ShardSampler(len(todo), trainer.global_rank, trainer.world_size), num_workers=num_workers)
        module = OODEvaluationModule(backbone, scorer, dataset.name, dataset.split, recipe.seed)
        trainer.predict(module, dataloaders=loader, return_predictions=False)
    _barrier(trainer)
    result = None
    if trainer.global_rank == 0:
        meta = {"key": key, "recipe": recipe.to_dict(), "feature_names": scorer.feature_names, "dataset": dataset.name, "split": dataset.split,
                "skipped_images": dataset.skipped}
        result = cache.finalize(folder, np.asarray(dataset.indices, dtype=np.int64), meta)
    _barrier(trainer)
    return result
