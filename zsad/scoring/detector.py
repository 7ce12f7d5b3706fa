"""Detectors fitted once on ID-train features (docs/method.md §4); higher score = more anomalous (GMM and KDE:
−log-likelihood; soft-min kNN: the calibrated soft-min distance to the references).

Saved as plain arrays (.npz) + JSON, never pickles."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import KFold
from sklearn.neighbors import KernelDensity
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from zsad.errors import ConfigError
from zsad.scoring.scoped_detector import ScopedKDEDetector
from zsad.scoring.ufcod_detector import PARITY_FLOOR, SELECTIONS, knn_distances, select_references, select_references_by_group, soft_min

GMM_STATE = ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_")


def _as_2d(features) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D]; got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    return x


@dataclass
class GMMDetector:
    """StandardScaler → GaussianMixture.

    mode="grid": DiffPath's model selection (n_components × covariance types, 10-fold CV on held-out
    log-likelihood, contiguous folds as GridSearchCV(cv=10) does). mode="fast": one fit with
    `n_components` and `covariance_type` (for large ID sets). Components are capped by the number of
    training samples, with a warning."""

    mode: str = "grid"
    n_components: int = 50
    covariance_type: str = "full"
    grid_components: list = field(default_factory=lambda: [50, 100])
    grid_covariances: list = field(default_factory=lambda: ["full", "tied", "diag", "spherical"])
    cv_folds: int = 10
    max_iter: int = 200
    reg_covar: float = 1e-6
    random_state: int = 0
    n_jobs: Optional[int] = None  # CV fits in parallel; None: all cores from 5,000 samples on, else one
    max_train: Optional[int] = None  # subsample ID-train features to this many (seeded) before fitting
    # grid mode: choose the setting on a seeded subsample of this many samples, then refit the chosen
    # setting on all of them (None: the whole set, DiffPath's way; 50,000 × 6 took 271–343 s on 2 cores)
    grid_max_samples: Optional[int] = 10_000

    def __post_init__(self) -> None:
        if self.mode not in ("grid", "fast"):
            raise ConfigError(f"detector mode must be 'grid' or 'fast', not '{self.mode}'.")
        self.pipeline_: Optional[Pipeline] = None
        self.best_params_: dict = {}
        self.cv_results_: list[dict] = []

    def _cap(self, k: int, n: int) -> int:
        if k > n:
            warnings.warn(f"GMM: {k} components requested but only {n} ID-train samples; using {n}.", stacklevel=3)
            return n
        return k

    def fit(self, features) -> "GMMDetector":
        x = _as_2d(features)
        if self.max_train and len(x) > self.max_train:
            keep = np.random.default_rng(self.random_state).choice(len(x), self.max_train, replace=False)
            x = x[np.sort(keep)]
        n = len(x)
        min_needed = self.cv_folds * 2 if self.mode == "grid" else 2
        if n < min_needed:
            raise ConfigError(
                f"The GMM detector ({self.mode} mode) needs at least {min_needed} ID-train images; got {n}. "
                + ("Use more ID-train images (max_fit_images), fewer folds (detector.gmm.cv_folds) or detector.gmm.mode=fast."
                   if self.mode == "grid" else "Use more ID-train images.")
            )
        make = lambda k, cov: Pipeline(  # noqa: E731
            [("scaler", StandardScaler()), ("gmm", GaussianMixture(k, covariance_type=cov, max_iter=self.max_iter, reg_covar=self.reg_covar,
                                                                   random_state=self.random_state))]
        )
        if self.mode == "fast":
            k = self._cap(self.n_components, n)
            self.pipeline_ = make(k, self.covariance_type).fit(x)
            self.best_params_ = {"gmm__n_components": k, "gmm__covariance_type": self.covariance_type}
        else:
            x_grid = x
            if self.grid_max_samples and n > self.grid_max_samples:
                keep = np.random.default_rng(self.random_state + 1).choice(n, int(self.grid_max_samples), replace=False)
                x_grid = x[np.sort(keep)]  # sorted: the contiguous CV folds keep the data's order
            m = len(x_grid)
            train_fold = m - -(-m // self.cv_folds)  # smallest training fold of the CV
            comps = sorted({self._cap(int(k), train_fold) for k in self.grid_components})
            n_jobs = self.n_jobs if self.n_jobs is not None else (-1 if m >= 5000 else None)
            self.best_params_, self.cv_results_ = grid_search(x_grid, make, comps, list(self.grid_covariances), self.cv_folds, n_jobs)
            self.best_params_["gmm__n_components"] = self._cap(self.best_params_["gmm__n_components"], n)
            self.pipeline_ = make(self.best_params_["gmm__n_components"], self.best_params_["gmm__covariance_type"]).fit(x)
        return self

    def score(self, features) -> np.ndarray:
        """Anomaly score per sample: −log-likelihood (higher = more anomalous)."""
        if self.pipeline_ is None:
            raise RuntimeError("GMMDetector.score called before fit/load")
        return -self.pipeline_.score_samples(_as_2d(features))

    def save(self, path: str | Path) -> None:
        """`path`.json (settings, chosen parameters) + `path`.npz (scaler and mixture arrays)."""
        if self.pipeline_ is None:
            raise RuntimeError("nothing to save: fit first")
        path = Path(path)
        scaler, gmm = self.pipeline_["scaler"], self.pipeline_["gmm"]
        arrays, scaler_meta = _scaler_state(scaler)
        arrays.update({f"gmm_{name}": getattr(gmm, name) for name in GMM_STATE})
        meta = {"kind": "gmm", "settings": asdict(self), "best_params": self.best_params_, **scaler_meta,
                "covariance_type": gmm.covariance_type, "n_components": int(gmm.n_components)}
        _write(path, meta, arrays)

    @classmethod
    def load(cls, path: str | Path) -> "GMMDetector":
        meta, arrays = _read(path, "gmm")
        det = cls(**meta["settings"])
        scaler = _scaler_from(arrays, meta)
        gmm = GaussianMixture(meta["n_components"], covariance_type=meta["covariance_type"])
        for name in GMM_STATE:
            setattr(gmm, name, arrays[f"gmm_{name}"])
        gmm.n_features_in_, gmm.converged_, gmm.n_iter_ = meta["n_features"], True, 0
        det.pipeline_ = Pipeline([("scaler", scaler), ("gmm", gmm)])
        det.best_params_ = meta["best_params"]
        return det


@dataclass
class KDEDetector:
    """Gaussian KDE on raw features (DiffPath-1D: bandwidth 5, no standardisation)."""

    bandwidth: float = 5.0

    def __post_init__(self) -> None:
        self.kde_: Optional[KernelDensity] = None
        self.train_: Optional[np.ndarray] = None

    def fit(self, features) -> "KDEDetector":
        x = _as_2d(features)
        if len(x) < 2:
            raise ConfigError(f"The KDE detector needs at least 2 ID-train images; got {len(x)}. Use more ID-train images.")
        self.train_ = x
        self.kde_ = KernelDensity(kernel="gaussian", bandwidth=self.bandwidth).fit(x)
        return self

    def score(self, features) -> np.ndarray:
        if self.kde_ is None:
            raise RuntimeError("KDEDetector.score called before fit/load")
        return -self.kde_.score_samples(_as_2d(features))

    def save(self, path: str | Path) -> None:
        _write(Path(path), {"kind": "kde", "settings": asdict(self)}, {"train": self.train_})

    @classmethod
    def load(cls, path: str | Path) -> "KDEDetector":
        meta, arrays = _read(path, "kde")
        return cls(**meta["settings"]).fit(arrays["train"])


CALIBRATION_EPS = 1e-8  # added to the calibration std, as UFCOD does
SOFTMIN_MODES = ("zsad", "parity")


@dataclass
class SoftMinKNNDetector:
    """UFCOD's few-shot detector (`EnergyOODDetector`, arXiv 2605.03410): `n_references` ID rows chosen by
    `selection` (facility_location | random | stratified, seeded by `random_state`; every row when there are
    no more), standardised on themselves; a row's score is the soft minimum at `temperature` of its
    distances to the `k` nearest references, z-calibrated on the references' own scores when `calibrate`.

    Higher = more anomalous: the negation of UFCOD's score (higher = in-distribution there).
    mode="parity": UFCOD's soft minimum with 1e-10 inside the log (it saturates at −T·ln 1e-10 ≈ 11.5, so far
    rows tie) and calibration statistics of the references scored against themselves (each its own nearest
    neighbour at distance 0). mode="zsad" (default): the exact log-sum-exp soft minimum, and leave-one-out
    calibration (each reference scored against the others, as a new ID row would be). `k` is capped by the
    number of references (by one fewer for leave-one-out) with a warning; UFCOD raises there.

    `fit(features, groups)` picks `n_references` per group (a tile position: zsad fit on tiles) and scores every row
    against all groups' references together."""

    k: int = 10
    temperature: float = 0.5
    n_references: int = 100
    selection: str = "facility_location"
    random_state: Optional[int] = 42
    calibrate: bool = True
    mode: str = "zsad"

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ConfigError(f"softmin_knn: selection must be one of {', '.join(SELECTIONS)}; got '{self.selection}'. "
                              "(UFCOD's code treats any other name as random.)")
        if self.mode not in SOFTMIN_MODES:
            raise ConfigError(f"softmin_knn: mode must be one of {', '.join(SOFTMIN_MODES)}; got '{self.mode}'.")
        if int(self.k) < 1 or int(self.n_references) < 1 or not float(self.temperature) > 0:
            raise ConfigError(f"softmin_knn: needs k >= 1, n_references >= 1 and temperature > 0; got k={self.k}, "
                              f"n_references={self.n_references}, temperature={self.temperature}.")
        self.scaler_: Optional[StandardScaler] = None
        self.references_: Optional[np.ndarray] = None  # standardised reference rows [n, D]
        self.selected_: Optional[np.ndarray] = None  # their indices in the fitted features
        self.calibration_mean_, self.calibration_std_ = 0.0, 1.0  # of the references' soft-min distances (std + 1e-8)
        self.groups_ = 0  # groups the references were picked in (tile positions); 0: all rows together
        self._own: Optional[np.ndarray] = None
        self.n_fitted_: Optional[int] = None  # rows fit was given (None: a detector saved before it was recorded)

    @property
    def _floor(self) -> Optional[float]:
        return PARITY_FLOOR if self.mode == "parity" else None

    def _k(self, available: int, warn: bool = False) -> int:
        if warn and int(self.k) > available:
            warnings.warn(f"softmin_knn: k={self.k} nearest references requested but only {available} available; using {available}.",
                          stacklevel=3)
        return min(int(self.k), available)

    def fit(self, features, groups: Optional[np.ndarray] = None) -> "SoftMinKNNDetector":
        """Pick the references (within each group of `groups`, one label per row, when given), standardise them,
        calibrate on them."""
        x = _as_2d(features)
        least = 2 if self.mode == "zsad" else 1
        if len(x) < least:
            raise ConfigError(f"The soft-min kNN detector ({self.mode} mode) needs at least {least} ID-train images; got {len(x)}.")
        n_references, selection, seed = int(self.n_references), self.selection, self.random_state
        self.selected_ = (select_references(x, n_references, selection, seed) if groups is None
                          else select_references_by_group(x, groups, n_references, selection, seed))
        self.groups_ = 0 if groups is None else len(np.unique(groups))
        self.scaler_ = StandardScaler().fit(x[self.selected_])
        self.references_ = self.scaler_.transform(x[self.selected_])
        n = len(self.references_)
        if self.mode == "zsad" and n < 2:
            raise ConfigError("The soft-min kNN detector (zsad mode) needs at least 2 references for leave-one-out calibration; "
                              "use mode=parity or more references.")
        leave_one_out = self.mode == "zsad"
        d = knn_distances(self.references_, self.references_, self._k(n - 1 if leave_one_out else n, warn=True),
                         exclude_self=leave_one_out)
        own = soft_min(d, float(self.temperature), self._floor)
        self.calibration_mean_, self.calibration_std_ = float(np.mean(own)), float(np.std(own) + CALIBRATION_EPS)
        self._own = own if leave_one_out else None  # the references' leave-one-out scores, for score_fitted (not saved)
        self.n_fitted_ = len(x)
        return self

    def soft_min_distance(self, features) -> np.ndarray:
        """Uncalibrated score per row: the soft-min distance to the k nearest references (UFCOD's raw score, negated)."""
        if self.references_ is None:
            raise RuntimeError("SoftMinKNNDetector used before fit/load")
        d = knn_distances(self.scaler_.transform(_as_2d(features)), self.references_, self._k(len(self.references_)))
        return soft_min(d, float(self.temperature), self._floor)

    def score(self, features) -> np.ndarray:
        """Anomaly score per row (higher = more anomalous): z-calibrated soft-min distance, or the raw one without `calibrate`."""
        return self._calibrated(self.soft_min_distance(features))

    def _calibrated(self, s: np.ndarray) -> np.ndarray:
        return (s - self.calibration_mean_) / self.calibration_std_ if self.calibrate else s

    def score_fitted(self, features, images: Optional[np.ndarray] = None) -> np.ndarray:
        """`score` of the rows `fit` was given, scored as new ID rows would be (zsad mode): each reference row leaves
        itself out (against itself it sits at distance 0, the self-match of parity mode). With `images`, one label per
        row (the image a tile came from), every row leaves out all references of its own image: a new image's tiles
        have no overlapping twin among the references, and a fit tile's neighbours at other positions overlap it."""
        if self.references_ is None:
            raise RuntimeError("SoftMinKNNDetector used before fit/load")
        x = _as_2d(features)
        if (self.n_fitted_ is not None and len(x) != self.n_fitted_) or (len(self.selected_) and int(self.selected_.max()) >= len(x)):
            raise ValueError(f"score_fitted takes the rows fit was given ({self.n_fitted_ or 'as many as before'}); got {len(x)}. "
                             "Use score for other rows.")
        if self.mode == "parity":
            return self.score(x)
        if images is not None:
            return self._calibrated(self._leave_image_out(x, np.asarray(images)))
        others = np.ones(len(x), dtype=bool)
        others[self.selected_] = False
        raw = np.empty(len(x))
        if self._own is not None:  # fitted here: fit scored the references this way already
            raw[self.selected_] = self._own
        else:
            d = knn_distances(self.scaler_.transform(x[self.selected_]), self.references_, self._k(len(self.references_) - 1), exclude_self=True)
            raw[self.selected_] = soft_min(d, float(self.temperature), self._floor)
        if others.any():
            raw[others] = self.soft_min_distance(x[others])
        return self._calibrated(raw)

    def _leave_image_out(self, x: np.ndarray, images: np.ndarray) -> np.ndarray:
        """Raw soft-min distance of every fitted row to the references of the other images."""
        if images.shape != (len(x),):
            raise ValueError(f"images must give one label per row: {len(x)} rows, images of shape {images.shape}")
        reference_images = images[self.selected_]
        kept = len(self.references_) - int(np.unique(reference_images, return_counts=True)[1].max())
        if kept < 1:
            raise ConfigError("Every reference comes from one image: the fit tiles cannot be scored without their own image. "
                              "Fit on at least 2 images (more normal images, or a larger --shots), or use --detector-kind gmm.")
        d = knn_distances(self.scaler_.transform(x), self.references_, self._k(kept), labels=(images, reference_images))
        return soft_min(d, float(self.temperature), self._floor)

    def predict(self, features, threshold: float = 0.0) -> np.ndarray:
        """1 where the score exceeds `threshold` (anomalous), else 0; at 0 with `calibrate`, 1 − UFCOD's `predict`."""
        return (self.score(features) > threshold).astype(int)

    def save(self, path: str | Path) -> None:
        """`path`.json (settings, calibration) + `path`.npz (scaler, standardised references, their indices)."""
        if self.references_ is None:
            raise RuntimeError("nothing to save: fit first")
        arrays, scaler_meta = _scaler_state(self.scaler_)
        arrays.update({"references": self.references_, "selected": self.selected_,
                       "calibration": np.array([self.calibration_mean_, self.calibration_std_])})
        meta = {"kind": "softmin_knn", "settings": asdict(self), **scaler_meta, "n_references": len(self.references_), "groups": self.groups_,
                "n_fitted": self.n_fitted_}
        _write(Path(path), meta, arrays)

    @classmethod
    def load(cls, path: str | Path) -> "SoftMinKNNDetector":
        meta, arrays = _read(path, "softmin_knn")
        det = cls(**meta["settings"])
        scaler = _scaler_from(arrays, meta)
        det.scaler_, det.references_, det.selected_ = scaler, arrays["references"], arrays["selected"]
        det.calibration_mean_, det.calibration_std_ = (float(v) for v in arrays["calibration"])
        det.groups_ = int(meta.get("groups", 0))
        det.n_fitted_ = meta.get("n_fitted")
        return det


def grid_search(x: np.ndarray, make, components: list[int], covariances: list[str], folds: int, n_jobs: Optional[int]) -> tuple[dict, list[dict]]:
    """DiffPath's model selection, as GridSearchCV(cv=KFold(folds)) does it (same grid order, contiguous
    folds, mean held-out log-likelihood, first best on ties), with a progress bar over the fits."""
    from joblib import Parallel, delayed

    from zsad.utils.progress import progress_bar

    grid = [(cov, k) for cov in covariances for k in components]  # ParameterGrid's order (sorted keys)
    splits = list(KFold(folds).split(x))

    def fit_score(cov: str, k: int, train, test) -> float:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*did not converge.*")
            return float(make(k, cov).fit(x[train]).score(x[test]))

    jobs = (delayed(fit_score)(cov, k, tr, te) for cov, k in grid for tr, te in splits)
    scores = []
    with progress_bar(len(grid) * len(splits), f"GMM grid ({len(grid)} settings × {folds} folds)", unit="fit") as bar:
        for score in Parallel(n_jobs=n_jobs, return_as="generator")(jobs):
            scores.append(score)
            bar.update(1)
    means = np.asarray(scores).reshape(len(grid), len(splits)).mean(axis=1)
    best = int(np.argmax(means))  # first maximum, as GridSearchCV's rank 1
    results = [{"covariance_type": cov, "n_components": k, "mean_test_loglik": float(m)} for (cov, k), m in zip(grid, means)]
    return {"gmm__covariance_type": grid[best][0], "gmm__n_components": grid[best][1]}, results


def _scaler_state(scaler: StandardScaler) -> tuple[dict, dict]:
    """A fitted StandardScaler as (arrays, JSON fields), for detectors saved without pickle."""
    arrays = {"scaler_mean": scaler.mean_, "scaler_scale": scaler.scale_, "scaler_var": scaler.var_}
    return arrays, {"n_features": int(scaler.n_features_in_), "n_samples_seen": int(scaler.n_samples_seen_)}


def _scaler_from(arrays, meta: dict) -> StandardScaler:
    """The StandardScaler that `_scaler_state` saved."""
    scaler = StandardScaler()
    scaler.mean_, scaler.scale_, scaler.var_ = arrays["scaler_mean"], arrays["scaler_scale"], arrays["scaler_var"]
    scaler.n_features_in_, scaler.n_samples_seen_ = meta["n_features"], meta["n_samples_seen"]
    return scaler


def _write(path: Path, meta: dict, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path.with_suffix(".npz"))
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=_json_default))


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def _read(path: str | Path, kind: str) -> tuple[dict, dict]:
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    if meta.get("kind") != kind:
        raise ValueError(f"{path}: a '{meta.get('kind')}' detector, not '{kind}'")
    with np.load(path.with_suffix(".npz"), allow_pickle=False) as data:
        return meta, {k: data[k] for k in data.files}


DETECTORS = {"gmm": GMMDetector, "kde": KDEDetector, "softmin_knn": SoftMinKNNDetector, "scoped_kde": ScopedKDEDetector}


def load_detector(path: str | Path):
    """Load a saved detector (GMMDetector, KDEDetector, SoftMinKNNDetector, ScopedKDEDetector) by the kind recorded in its JSON."""
    kind = json.loads(Path(path).with_suffix(".json").read_text()).get("kind")
    if kind not in DETECTORS:
        raise ValueError(f"{path}: unknown detector kind '{kind}'")
    return DETECTORS[kind].load(path)


def make_detector(kind: str, detector_cfg) -> GMMDetector | KDEDetector | SoftMinKNNDetector | ScopedKDEDetector:
    """A detector of `kind` (a scorer's `detector`: gmm | kde | softmin_knn) with the settings of a config's
    `detector:` section for it; the detector's defaults when the section has none."""
    from omegaconf import OmegaConf

    if kind not in DETECTORS:
        raise ConfigError(f"Unknown detector kind '{kind}'. Known kinds: {', '.join(DETECTORS)}.")
    section = detector_cfg.get(kind) if detector_cfg is not None else None
    settings = {} if section is None else OmegaConf.to_container(section) if OmegaConf.is_config(section) else dict(section)
    return DETECTORS[kind](**settings)


def describe_detector(detector) -> str:
    """The settings a detector was fitted with, in a few words (chosen by model selection when grid)."""
    if isinstance(detector, KDEDetector):
        return f"KDE, bandwidth {detector.bandwidth:g}"
    if isinstance(detector, ScopedKDEDetector):
        bw = detector.kde_.bandwidth_ if detector.kde_ is not None else detector.bandwidth
        chosen = f"chosen by {detector.selection} on ID data" if detector.select and detector.selection != "all" else "every level computed"
        return f"SCOPED KDE of the {detector.statistic} statistic at levels {list(map(int, detector.levels_))} ({chosen}), bandwidth {bw:.3g}"
    if isinstance(detector, SoftMinKNNDetector):
        n = len(detector.references_) if detector.references_ is not None else detector.n_references
        per = f" ({detector.n_references} at most per tile position, {detector.groups_} positions)" if detector.groups_ else ""
        return (f"soft-min kNN (k {detector.k}, T {detector.temperature:g}) over {n} references{per} by {detector.selection} "
                f"(seed {detector.random_state}), {detector.mode} mode" + (", z-calibrated" if detector.calibrate else ""))
    p = detector.best_params_
    how = f"chosen by {detector.cv_folds}-fold CV" if detector.mode == "grid" else "fixed"
    return f"GMM {p['gmm__n_components']} components, {p['gmm__covariance_type']} covariance ({how})"
