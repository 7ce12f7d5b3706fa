"""SCOPED's detector (arXiv 2510.01456; docs/method.md §3.6): the noise levels kept, chosen on ID-train features
only; the statistic that combines the score norm and the score-Jacobian trace; a Gaussian KDE of the ID
statistics. Higher score = more anomalous (−log density).

Features come from zsad.scoring.scorers.scoped: per level, [‖s‖², tr ∂s/∂x]."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
from sklearn.neighbors import KernelDensity

from zsad.errors import ConfigError

# ratio: ‖s‖² / (−tr ∂s/∂x), the "score-curvature ratio" (1 in expectation for the model's own distribution,
# by Stein's identity E‖s‖² = −E tr ∂s/∂x; dimensionless). hyvarinen: ‖s‖² + 2·tr ∂s/∂x, twice the Hyvärinen
# score (0 in expectation there). both: the two parts as separate KDE dimensions.
STATISTICS = ("ratio", "hyvarinen", "both")
# stein: the levels where the ID data best satisfy Stein's identity, |log(mean ‖s‖² / mean −tr)| smallest, i.e.
# where the base model's score is most faithful to this ID set. spread: the smallest robust relative spread of
# the statistic over ID images (IQR / median |statistic|). all: every level the scorer computed.
SELECTIONS = ("stein", "spread", "all")
BANDWIDTH_RULES = ("scott", "silverman")
TINY = 1e-12


def level_parts(features) -> tuple[np.ndarray, np.ndarray]:
    """(‖s‖² [N, L], tr ∂s/∂x [N, L]) from SCOPED features [N, 2L]."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] % 2 or x.shape[1] == 0:
        raise ValueError(f"SCOPED features must be [N, 2·levels]; got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    return x[:, 0::2], x[:, 1::2]


def statistic(features, how: str = "ratio") -> np.ndarray:
    """The per-level statistic [N, L] (ratio, hyvarinen) or [N, 2L] (both: ‖s‖² and tr side by side per level)."""
    norm2, trace = level_parts(features)
    if how == "ratio":
        curvature = -trace
        curvature = np.where(np.abs(curvature) < TINY, np.copysign(TINY, curvature), curvature)
        return norm2 / curvature
    if how == "hyvarinen":
        return norm2 + 2 * trace
    if how == "both":
        return np.stack([norm2, trace], axis=2).reshape(len(norm2), -1)
    raise ConfigError(f"scoped_kde: statistic must be one of {', '.join(STATISTICS)}; got '{how}'.")


def choose_levels(id_features, count: Optional[int], how: str = "stein", stat: str = "ratio") -> np.ndarray:
    """Indices of the `count` levels kept (sorted), from ID features only; every level when count is None/0 or `how` is all."""
    norm2, trace = level_parts(id_features)
    levels = norm2.shape[1]
    if how not in SELECTIONS:
        raise ConfigError(f"scoped_kde: selection must be one of {', '.join(SELECTIONS)}; got '{how}'.")
    if how == "all" or not count or int(count) >= levels:
        return np.arange(levels)
    if how == "stein":
        cost = np.abs(np.log(np.maximum(norm2.mean(0), TINY) / np.maximum(-trace.mean(0), TINY)))
    else:
        s = statistic(id_features, "ratio" if stat == "both" else stat)
        q75, q25 = np.percentile(s, [75, 25], axis=0)
        cost = (q75 - q25) / np.maximum(np.median(np.abs(s), axis=0), TINY)
    return np.sort(np.argsort(cost, kind="stable")[: int(count)])


@dataclass
class ScopedKDEDetector:
    """Keep `select` of the scorer's levels by `selection` on the ID-train features (every level when `select` is
    None or 0); take `statistic` at them; standardise each column on the ID set (`standardize`); Gaussian KDE with
    `bandwidth` (a number, or scott | silverman, sklearn's rules on the standardised columns).

    The default (both parts, every level, Scott's rule) was chosen by experiments/scoped/RULE.md on two benchmarks;
    the paper's reading as zsad reads it is statistic="ratio", select=2, selection="stein"."""

    statistic: str = "both"
    select: Optional[int] = None
    selection: str = "stein"  # how `select` levels are picked when select is a number
    bandwidth: Union[float, str] = "scott"
    standardize: bool = True

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ConfigError(f"scoped_kde: statistic must be one of {', '.join(STATISTICS)}; got '{self.statistic}'.")
        if self.selection not in SELECTIONS:
            raise ConfigError(f"scoped_kde: selection must be one of {', '.join(SELECTIONS)}; got '{self.selection}'.")
        if self.select is not None and int(self.select) < 0:
            raise ConfigError(f"scoped_kde: select must be a number of levels >= 1 (or null/0 for all); got {self.select}.")
        if self.select and self.selection == "all":  # choose_levels would keep every level: say so instead
            raise ConfigError(f"scoped_kde: select={self.select} with selection=all keeps every level; set selection to stein or "
                              "spread to keep that many, or select to null to keep all.")
        if isinstance(self.bandwidth, str):
            if self.bandwidth not in BANDWIDTH_RULES:
                raise ConfigError(f"scoped_kde: bandwidth must be a positive number or one of {', '.join(BANDWIDTH_RULES)}; "
                                  f"got '{self.bandwidth}'.")
        elif not float(self.bandwidth) > 0:
            raise ConfigError(f"scoped_kde: bandwidth must be positive; got {self.bandwidth}.")
        self.train_: Optional[np.ndarray] = None
        self.levels_: Optional[np.ndarray] = None
        self.mean_: Optional[np.ndarray] = None
        self.scale_: Optional[np.ndarray] = None
        self.kde_: Optional[KernelDensity] = None

    def _columns(self, features) -> np.ndarray:
        s = statistic(features, self.statistic)
        per_level = 2 if self.statistic == "both" else 1
        cols = (self.levels_[:, None] * per_level + np.arange(per_level)).ravel()
        return s[:, cols]

    def fit(self, features) -> "ScopedKDEDetector":
        x = np.asarray(features, dtype=np.float64)
        if len(x) < 2:
            raise ConfigError(f"The SCOPED KDE detector needs at least 2 ID-train images; got {len(x)}. Use more ID-train images.")
        self.train_ = x
        self.levels_ = choose_levels(x, self.select, self.selection, self.statistic)
        z = self._columns(x)
        self.mean_ = z.mean(0) if self.standardize else np.zeros(z.shape[1])
        self.scale_ = np.where(z.std(0) > 0, z.std(0), 1.0) if self.standardize else np.ones(z.shape[1])
        self.kde_ = KernelDensity(kernel="gaussian", bandwidth=self.bandwidth).fit((z - self.mean_) / self.scale_)
        return self

    def score(self, features) -> np.ndarray:
        """−log KDE density of each row's statistics (higher = more anomalous)."""
        if self.kde_ is None:
            raise RuntimeError("ScopedKDEDetector.score called before fit/load")
        return -self.kde_.score_samples((self._columns(features) - self.mean_) / self.scale_)

    def save(self, path: str | Path) -> None:
        """`path`.json (settings, the levels kept, the bandwidth used) + `path`.npz (the ID-train features; load refits)."""
        from zsad.scoring.detector import _write  # detector.py registers this class: imported here, not at the top

        if self.train_ is None:
            raise RuntimeError("nothing to save: fit first")
        _write(Path(path), {"kind": "scoped_kde", "settings": asdict(self), "levels": self.levels_.tolist(),
                            "bandwidth_used": float(self.kde_.bandwidth_)}, {"train": self.train_})

    @classmethod
    def load(cls, path: str | Path) -> "ScopedKDEDetector":
        from zsad.scoring.detector import _read

        meta, arrays = _read(path, "scoped_kde")
        settings = dict(meta["settings"])
        if settings.get("selection") == "all":  # saved before `select` with `all` was refused: `all` kept every level then too
            settings["select"] = None
        return cls(**settings).fit(arrays["train"])
