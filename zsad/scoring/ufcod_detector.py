"""UFCOD's few-shot detector maths (arXiv 2605.03410, docs/method.md §4): reference selection and the
soft minimum over the k nearest references, as pure numpy functions. `SoftMinKNNDetector` in
`zsad/scoring/detector.py` fits, scores and stores them.

Written from a reading of UFCOD's `EnergyOODDetector` (github.com/lili0415/UFCOD at 87e4eef); the choices
that decide parity with it (seeded legacy RNG streams, the selection's standardisation, the first-index tie
break, the 1e-10 floor of `floor` mode) are kept, and tests/test_ufcod.py checks them against values its
code produced."""

from __future__ import annotations

from typing import Optional

import numpy as np

from zsad.errors import ConfigError

SELECTIONS = ("facility_location", "random", "stratified")
STRATA = 5  # norm quantile layers of `stratified` (fixed in UFCOD's detector)
SELECTION_EPS = 1e-8  # added to each column's std when facility location standardises all rows
PARITY_FLOOR = 1e-10  # added inside the log of UFCOD's soft minimum (parity mode)
_BLOCK = 1 << 22  # float64 elements per temporary block (32 MiB)
_CACHE_ROWS = 4096  # facility location keeps the N × N distance matrix up to this many rows (128 MiB)


def select_references(x: np.ndarray, n_references: int, selection: str, random_state: Optional[int]) -> np.ndarray:
    """Indices of the reference rows of `x` [N, D]: every row when N ≤ n_references, else `selection`
    (facility_location | random | stratified) with numpy's legacy generator seeded by `random_state`."""
    if selection not in SELECTIONS:
        raise ConfigError(f"reference selection must be one of {', '.join(SELECTIONS)}; got '{selection}'.")
    n = len(x)
    if n <= n_references:
        return np.arange(n)
    rng = np.random.RandomState(random_state)  # the stream of np.random.seed(random_state), without touching the global one
    if selection == "facility_location":
        return facility_location(x, n_references, rng)
    if selection == "stratified":
        return stratified(x, n_references, rng)
    return rng.choice(n, n_references, replace=False)


def select_references_by_group(x: np.ndarray, groups: np.ndarray, n_references: int, selection: str,
                                random_state: Optional[int]) -> np.ndarray:
    """`select_references` within each group of rows (a tile position on tiled images), `n_references` per group
    with the same seed, as UFCOD would pick them from that group's rows alone; indices into `x`, group by group in
    ascending label order. Facility location's O(n_references · N²) then runs on each group's N rows (the fit
    images), not on every tile row together (about 22,000 on an MVTec category)."""
    groups = np.asarray(groups)
    if groups.shape != (len(x),):
        raise ValueError(f"groups must give one label per row: {len(x)} rows, groups of shape {groups.shape}")
    out = []
    for label in np.unique(groups):
        members = np.flatnonzero(groups == label)
        out.append(members[select_references(x[members], n_references, selection, random_state)])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _distance_rows(z: np.ndarray, rows: slice) -> np.ndarray:
    """Euclidean distances from rows `rows` of z to every row of z, [len(rows), N], computed as
    np.linalg.norm(z - z[i], axis=1) computes each row (same operations, same rounding)."""
    return np.linalg.norm(z[None, :, :] - z[rows, None, :], axis=-1)


def facility_location(x: np.ndarray, n_references: int, rng: np.random.RandomState) -> np.ndarray:
    """Greedy facility location on the standardised rows (every column by its mean and std + 1e-8): a random
    first row, then repeatedly the unselected row that most reduces Σ_j min distance to the selection
    (the lowest index on ties). O(n_references · N²) time; the N × N distances are kept up to 4096 rows."""
    N, D = x.shape
    z = (x - x.mean(axis=0)) / (x.std(axis=0) + SELECTION_EPS)
    chunk = max(1, _BLOCK // max(1, N * D))
    cached = None
    if N <= _CACHE_ROWS:
        cached = np.empty((N, N))
        for start in range(0, N, chunk):
            cached[start : start + chunk] = _distance_rows(z, slice(start, start + chunk))

    def rows(start: int, stop: int) -> np.ndarray:
        return cached[start:stop] if cached is not None else _distance_rows(z, slice(start, stop))

    first = int(rng.randint(N))
    order, taken = [first], np.zeros(N, dtype=bool)
    taken[first] = True
    nearest = rows(first, first + 1)[0]  # distance of every row to its nearest selected row
    for _ in range(n_references - 1):
        best, best_gain = -1, -np.inf
        for start in range(0, N, chunk):
            block = rows(start, min(N, start + chunk))
            gain = np.sum(nearest - np.minimum(nearest, block), axis=1)  # row-wise: the same pairwise sum as one row at a time
            gain[taken[start : start + len(block)]] = -np.inf
            j = int(np.argmax(gain))  # first maximum: the lowest index wins a tie
            if gain[j] > best_gain:
                best, best_gain = start + j, gain[j]
        order.append(best)
        taken[best] = True
        nearest = np.minimum(nearest, rows(best, best + 1)[0])
    return np.asarray(order)


def stratified(x: np.ndarray, n_references: int, rng: np.random.RandomState, strata: int = STRATA) -> np.ndarray:
    """Rows drawn without replacement from `strata` layers between quantiles of the raw (unstandardised) row
    norms, n // strata per layer and one more in the first n % strata layers; a layer with fewer rows gives
    them all, so fewer than n_references may come back."""
    norms = np.linalg.norm(x, axis=1)
    edges = np.percentile(norms, np.linspace(0, 100, strata + 1))
    per, extra = divmod(n_references, strata)
    out: list = []
    for i in range(strata):
        upper = norms <= edges[i + 1] if i == strata - 1 else norms < edges[i + 1]
        members = np.flatnonzero((norms >= edges[i]) & upper)
        if len(members):  # an empty draw still advances the generator: keep the call
            out.extend(rng.choice(members, min(per + (i < extra), len(members)), replace=False))
    return np.asarray(out[:n_references], dtype=np.int64)


def knn_distances(queries: np.ndarray, references: np.ndarray, k: int, exclude_self: bool = False,
                  labels: Optional[tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
    """Distances [M, k] from each query row to its k nearest reference rows, ascending. With `exclude_self`
    (queries are the references themselves) a row's own index is left out, duplicates of it are not. With
    `labels` (one per query, one per reference: the image a tile came from) a query leaves out every reference
    with its label; k must not exceed the references any query keeps."""
    m, n = len(queries), len(references)
    out = np.empty((m, k))
    chunk = max(1, _BLOCK // max(1, n * queries.shape[1]))
    for start in range(0, m, chunk):
        q = queries[start : start + chunk]
        d = np.linalg.norm(q[:, None, :] - references[None, :, :], axis=-1)
        if exclude_self:
            d[np.arange(len(q)), np.arange(start, start + len(q))] = np.inf
        if labels is not None:
            d[labels[0][start : start + len(q), None] == labels[1][None, :]] = np.inf
        if k < n:
            d = np.partition(d, k - 1, axis=1)[:, :k]
        out[start : start + len(q)] = np.sort(d, axis=1)[:, :k]
    return out


def soft_min(distances: np.ndarray, temperature: float, floor: Optional[float] = None) -> np.ndarray:
    """Soft minimum −T·log Σ_j exp(−d_j/T) over each row of `distances` [M, k].

    floor None: in log-sum-exp form, d_min − T·log Σ_j exp(−(d_j − d_min)/T), exact at any distance.
    floor f (UFCOD: 1e-10): −T·log(Σ_j exp(−d_j/T) + f), which saturates at −T·log f (11.5 for T = 0.5): rows
    farther than about 15 units differ by under 1e-3, and beyond about 30 they are equal in float64."""
    if floor is not None:
        return -temperature * np.log(np.sum(np.exp(-distances / temperature), axis=1) + floor)
    nearest = distances.min(axis=1, keepdims=True)
    return nearest[:, 0] - temperature * np.log(np.sum(np.exp(-(distances - nearest) / temperature), axis=1))
