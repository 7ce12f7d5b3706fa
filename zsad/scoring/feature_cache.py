"""On-disk feature cache: one entry per (feature recipe, dataset split), complete or not.

An entry is `<root>/<scorer>/<dataset>_<split>/<key[:24]>/` holding `features.npz` + `meta.json` when
complete and `shards/` while extraction runs. Several runs may share a root at the same time (a
cluster user's normal case): shards are written atomically under per-run names, the final files are
written under an exclusive file lock, and a damaged entry is reported and recomputed."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from zsad.data.base import ImageDataset
from zsad.scoring.recipe import FeatureRecipe
from zsad.scoring.scorers import Scorer
from zsad.utils.console import say
from zsad.utils.files import disk_full_guard

# Bump when the layout of an entry changes (not the features: those have Scorer.version).
FEATURE_FORMAT_VERSION = 3  # 3: keyed by the feature recipe (zsad/scoring/recipe.py)
# What a damaged file can raise while being read back.
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, RuntimeError, zipfile.BadZipFile, json.JSONDecodeError, pickle.UnpicklingError)


@dataclass
class FeatureSet:
    """Features of one dataset split: rows sorted by image index; `seeds` are the per-image noise seeds,
    a hash of (global seed, pixels), so equal seeds within one run mean byte-identical images."""

    features: np.ndarray  # float64 [N, D]
    indices: np.ndarray  # int64 [N]
    seeds: np.ndarray  # int64 [N]
    meta: dict
    from_cache: bool = False


def cache_key(recipe: FeatureRecipe, dataset: ImageDataset) -> str:
    """sha256 of the recipe's identity fields and the dataset's file identity; nothing else (output folder,
    loader batch, `network_batch`, bootstrap)."""
    return recipe.key(FEATURE_FORMAT_VERSION, dataset.fingerprint())


class FeatureCache:
    """Reads, writes and locks cache entries under `root`."""

    def __init__(self, root: str | Path, log: Optional[Callable[[str], None]] = None):
        self.root = Path(root)
        self.log = log or say

    def folder(self, scorer: Scorer, dataset: ImageDataset, key: str) -> Path:
        return self.root / scorer.name / f"{dataset.name}_{dataset.split}" / key[:24]

    @contextlib.contextmanager
    def locked(self, folder: Path) -> Iterator[None]:
        """Exclusive lock on one entry (fcntl; held by this process only)."""
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def load(self, folder: Path) -> Optional[FeatureSet]:
        """The complete entry, or None. A damaged entry is reported in one line, removed, and None returned."""
        if not (folder / "meta.json").is_file():
            return None
        try:
            meta = json.loads((folder / "meta.json").read_text())
            with np.load(folder / "features.npz", allow_pickle=False) as data:
                fs = FeatureSet(data["features"], data["indices"], data["seeds"], meta, from_cache=True)
            if fs.features.shape != (meta["n"], meta["dim"]) or len(fs.indices) != meta["n"] or len(fs.seeds) != meta["n"]:
                raise ValueError(f"{fs.features.shape[0]} rows where meta.json says {meta['n']}")
            return fs
        except _READ_ERRORS as err:
            self.log(f"[cache] damaged entry {folder} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); recomputing")
            for name in ("meta.json", "features.npz"):
                (folder / name).unlink(missing_ok=True)
            return None

    def read_shards(self, shard_dir: Path, exclude_nonce: Optional[str] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indices, seeds, features) of every readable shard; a damaged shard is reported and removed."""
        idx, seeds, feats = [], [], []
        for path in sorted(shard_dir.glob("part-*.pt")) if shard_dir.is_dir() else []:
            if exclude_nonce is not None and path.name.startswith(f"part-{exclude_nonce}-"):
                continue
            try:
                shard = torch.load(path, map_location="cpu", weights_only=True)
                i, s, f = shard["index"].numpy(), shard["seed"].numpy(), shard["features"].numpy()
            except FileNotFoundError:  # finished and cleaned up by a concurrent run meanwhile
                continue
            except _READ_ERRORS as err:
                self.log(f"[cache] damaged shard {path} ({type(err).__name__}); its images are recomputed")
                path.unlink(missing_ok=True)
                continue
            idx.append(i)
            seeds.append(s)
            feats.append(f)
        if not idx:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0))
        return np.concatenate(idx), np.concatenate(seeds), np.concatenate(feats)

    def finalize(self, folder: Path, expected: np.ndarray, meta: dict) -> FeatureSet:
        """Gather shards by index (each index once), check coverage, write atomically, drop the shards read.

        Runs under the entry's lock; if a concurrent run completed the entry first, its result is used."""
        with self.locked(folder):
            done = self.load(folder)
            if done is not None:
                self._drop_shards(folder / "shards")
                return FeatureSet(done.features, done.indices, done.seeds, done.meta)
            indices, seeds, features = self.read_shards(folder / "shards")
            order = np.argsort(indices, kind="stable")
            indices, seeds, features = indices[order], seeds[order], features[order]
            indices, first = np.unique(indices, return_index=True)  # a batch re-run after a crash may appear twice
            seeds, features = seeds[first], features[first]
            if not np.array_equal(indices, np.sort(expected)):
                missing = np.setdiff1d(expected, indices)
                raise RuntimeError(f"Feature extraction incomplete in {folder}: {len(missing)} images missing (first {missing[:10].tolist()}).")
            tmp = folder / f".features.{os.getpid()}.tmp.npz"
            tmp_meta = folder / f".meta.{os.getpid()}.tmp"
            with disk_full_guard(folder / "features.npz", features.nbytes + 16 * len(indices), partial=[tmp, tmp_meta]):
                np.savez(tmp, features=features, indices=indices, seeds=seeds)
                os.replace(tmp, folder / "features.npz")
                meta = {**meta, "n": int(len(indices)), "dim": int(features.shape[1])}
                tmp_meta.write_text(json.dumps(meta, indent=2, default=str))
                os.replace(tmp_meta, folder / "meta.json")  # written last: its presence means complete
            self._drop_shards(folder / "shards")
            return FeatureSet(features, indices, seeds, meta)

    @staticmethod
    def _drop_shards(shard_dir: Path) -> None:
        for path in shard_dir.glob("part-*.pt") if shard_dir.is_dir() else []:
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # a concurrent run may be writing a last shard
            shard_dir.rmdir()
