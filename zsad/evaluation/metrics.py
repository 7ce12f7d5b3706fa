"""OOD metrics with one sign convention (docs/method.md §2): scores are higher = more anomalous, OOD is
the positive class for AUROC, FPR@95TPR and AUPR-Out; ID is positive for AUPR-In.

torchmetrics computes every number, but it never sees a raw score: its binary functions apply a
sigmoid to any input outside [0, 1], and in float64 every score above ≈ 37 becomes exactly 1.0 (a
tie), so an AUROC of 0.92 reads as 0.5. Every function here first maps the scores to their dense
ranks scaled into (0, 1] (`rank_scores`): order and ties are kept exactly, so all rank-based metrics
equal sklearn's on the raw scores, for scores of any sign and magnitude.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Hashable, Iterator, Optional, Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc, binary_average_precision, binary_roc

ArrayLike = Sequence[float] | np.ndarray


def rank_scores(scores: ArrayLike) -> np.ndarray:
    """Dense ranks of `scores` divided by the number of distinct values: an order-preserving map into
    (0, 1] that keeps ties tied (equal scores → equal values, a < b → rank(a) < rank(b))."""
    scores = np.asarray(scores, dtype=np.float64)
    distinct, inverse = np.unique(scores, return_inverse=True)
    return (inverse.reshape(scores.shape) + 1) / max(len(distinct), 1)


@contextmanager
def _float64() -> Iterator[None]:
    """torchmetrics divides integer counts (tps / tps[-1]) in the default dtype: float32 would cost
    ~3e-8 of precision, so its calls run with float64 as the default."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _check(s_id: np.ndarray, s_ood: np.ndarray) -> None:
    if s_id.size == 0 or s_ood.size == 0:
        raise ValueError("OOD metrics need at least one ID and one OOD score.")
    if not (np.isfinite(s_id).all() and np.isfinite(s_ood).all()):
        raise ValueError("OOD metrics got non-finite scores.")


def _labelled(id_scores: ArrayLike, ood_scores: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """(ranked scores in (0, 1], labels with OOD = 1): the one place the sign convention is applied."""
    s_id = np.asarray(id_scores, dtype=np.float64).ravel()
    s_ood = np.asarray(ood_scores, dtype=np.float64).ravel()
    _check(s_id, s_ood)
    ranks = torch.from_numpy(rank_scores(np.concatenate([s_id, s_ood])))
    labels = torch.cat([torch.zeros(len(s_id), dtype=torch.long), torch.ones(len(s_ood), dtype=torch.long)])
    return ranks, labels


def auroc(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """Area under ROC with OOD as positive (0.5 = chance, 1 = every OOD scored above every ID)."""
    ranks, labels = _labelled(id_scores, ood_scores)
    with _float64():
        return float(binary_auroc(ranks, labels, validate_args=False))


def roc_curve(id_scores: ArrayLike, ood_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold, from (0, 0) to (1, 1), OOD positive."""
    ranks, labels = _labelled(id_scores, ood_scores)
    with _float64():
        fpr, tpr, _ = binary_roc(ranks, labels, validate_args=False)
    return fpr.numpy().astype(np.float64), tpr.numpy().astype(np.float64)


def _fpr_at(fpr: np.ndarray, tpr_curve: np.ndarray, tpr: float) -> float:
    return float(fpr[tpr_curve >= tpr - 1e-12].min())


def fpr_at_tpr(id_scores: ArrayLike, ood_scores: ArrayLike, tpr: float = 0.95) -> float:
    """Fraction of ID images scored at or above the highest threshold that flags `tpr` of OOD images."""
    return _fpr_at(*roc_curve(id_scores, ood_scores), tpr)


def ood_metrics(id_scores: ArrayLike, ood_scores: ArrayLike) -> dict[str, float]:
    """{"auroc", "fpr95", "aupr_in", "aupr_out"} for one (ID, OOD) pair."""
    ranks, labels = _labelled(id_scores, ood_scores)
    # AUPR-In ranks ID first: the reversed order, mapped into (0, 1] again.
    reversed_ranks = 1 + ranks.min() - ranks
    with _float64():
        fpr, tpr, _ = binary_roc(ranks, labels, validate_args=False)
        return {
            "auroc": float(binary_auroc(ranks, labels, validate_args=False)),
            "fpr95": _fpr_at(fpr.numpy(), tpr.numpy(), 0.95),
            "aupr_in": float(binary_average_precision(reversed_ranks, 1 - labels, validate_args=False)),
            "aupr_out": float(binary_average_precision(ranks, labels, validate_args=False)),
        }


def bootstrap_auroc_ci(
    id_scores: ArrayLike, ood_scores: ArrayLike, n_boot: int = 1000, level: float = 0.95, seed: int = 0, progress=None
) -> tuple[float, float]:
    """Percentile bootstrap interval for AUROC, resampling ID and OOD sets separately (stratified).

    The ranks are taken once over all scores: a rank map is order-preserving on every resample, so
    each resample's AUROC equals sklearn's on its raw scores, and the interval does not move with an
    offset or scale of the scores."""
    return bootstrap_mean_auroc([(id_scores, ood_scores)], n_boot, level, seed, progress)  # the mean of one pair


def bootstrap_mean_auroc(
    pairs: Sequence[tuple[ArrayLike, ArrayLike]], n_boot: int = 200, level: float = 0.95, seed: int = 0, progress=None,
    sets: Optional[Sequence[tuple[Hashable, Hashable]]] = None,
) -> tuple[float, float]:
    """Percentile interval of the mean AUROC over (ID scores, OOD scores) pairs, on ranks as above. Every resample
    redraws the images of each set once (stratified); `sets` names each pair's (ID set, OOD set), so pairs that share
    a set (set A's test images as ID of (A, B) and as OOD of (C, A)) share its draw. Without `sets`, no pair shares."""
    ranked = []
    for id_scores, ood_scores in pairs:
        ranks, labels = _labelled(id_scores, ood_scores)
        n_id = int((labels == 0).sum())
        ranked.append((ranks[:n_id].numpy(), ranks[n_id:].numpy(), labels))
    slots, sizes = _set_slots([(len(i), len(o)) for i, o, _ in ranked], sets)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    with _float64():
        for b in range(n_boot):
            draw = _draw(rng, sizes)
            values = [float(binary_auroc(torch.from_numpy(np.concatenate([i[draw[si]], o[draw[so]]])), y, validate_args=False))
                      for (i, o, y), (si, so) in zip(ranked, slots)]
            means[b] = np.mean(values)
            if progress is not None:
                progress(1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _set_slots(sizes: Sequence[tuple[int, int]], sets: Optional[Sequence[tuple[Hashable, Hashable]]]) -> tuple[list[tuple[int, int]], list[int]]:
    """(for each pair, the positions of its ID and OOD set among the distinct sets; each distinct set's size). Sets are
    numbered in order of first use, ID before OOD, pair by pair: with no set shared, the draws are those of resampling
    every pair's ID and then OOD images in turn. Without `sets`, each pair has two sets of its own."""
    if sets is None:
        sets = [((k, "id"), (k, "ood")) for k in range(len(sizes))]
    if len(sets) != len(sizes):
        raise ValueError(f"bootstrap: {len(sets)} (ID set, OOD set) names for {len(sizes)} pairs")
    position: dict = {}
    counts: list[int] = []
    slots = []
    for (id_set, ood_set), (n_id, n_ood) in zip(sets, sizes):
        if id_set == ood_set:
            raise ValueError(f"bootstrap: pair ({id_set!r}, {ood_set!r}) uses one set as both ID and OOD")
        for name, n in ((id_set, n_id), (ood_set, n_ood)):
            if name not in position:
                position[name] = len(counts)
                counts.append(n)
            elif counts[position[name]] != n:
                raise ValueError(f"bootstrap: set {name!r} has {counts[position[name]]} scores in one pair and {n} in another; "
                                 "a shared set must be the same images in the same order in every pair")
        slots.append((position[id_set], position[ood_set]))
    return slots, counts


def _draw(rng: np.random.Generator, sizes: Sequence[int]) -> list[np.ndarray]:
    """One bootstrap draw of every set: indices with replacement, in the order of `sizes`."""
    return [rng.integers(0, n, n) for n in sizes]


def _auroc_from_ranks(ranks: np.ndarray, n_id: int) -> float:
    """Mann–Whitney AUROC from average ranks of [ID…, OOD…] (ties count half), OOD positive."""
    n_ood = len(ranks) - n_id
    return float((ranks[n_id:].sum() - n_ood * (n_ood + 1) / 2) / (n_id * n_ood))


def paired_bootstrap_delta(pairs_a: Sequence[tuple[ArrayLike, ArrayLike]], pairs_b: Sequence[tuple[ArrayLike, ArrayLike]], n_boot: int = 1000,
                           level: float = 0.95, seed: int = 0, sets: Optional[Sequence[tuple[Hashable, Hashable]]] = None) -> tuple[float, float, float]:
    """(Δ, low, high): Δ = mean AUROC of `a` − mean AUROC of `b` over the pairs, with a percentile interval from
    resamples that redraw the same ID and OOD images for both (the scores of a pair are of the same images in the
    same order), so the interval is that of the difference, not of two means. `sets` names each pair's (ID set,
    OOD set) as in `bootstrap_mean_auroc`: a set shared by several pairs is redrawn once per resample, for all of them."""
    from scipy.stats import rankdata

    if len(pairs_a) != len(pairs_b) or not pairs_a:
        raise ValueError("paired bootstrap: the same, non-empty list of pairs for both settings")
    data = []
    for (ia, oa), (ib, ob) in zip(pairs_a, pairs_b):
        ia, oa, ib, ob = (np.asarray(x, dtype=np.float64).ravel() for x in (ia, oa, ib, ob))
        if len(ia) != len(ib) or len(oa) != len(ob):
            raise ValueError("paired bootstrap: both settings must score the same images")
        for s in (ia, oa, ib, ob):
            _check(s, s)
        data.append((ia, oa, ib, ob))
    slots, sizes = _set_slots([(len(ia), len(oa)) for ia, oa, _, _ in data], sets)
    point = float(np.mean([auroc(ia, oa) - auroc(ib, ob) for ia, oa, ib, ob in data]))
    rng = np.random.default_rng(seed)
    deltas = np.empty(n_boot)
    for b in range(n_boot):
        draw = _draw(rng, sizes)
        total = 0.0
        for (ia, oa, ib, ob), (si, so) in zip(data, slots):
            i, o = draw[si], draw[so]
            total += _auroc_from_ranks(rankdata(np.concatenate([ia[i], oa[o]])), len(i))
            total -= _auroc_from_ranks(rankdata(np.concatenate([ib[i], ob[o]])), len(i))
        deltas[b] = total / len(data)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(deltas, [alpha, 1 - alpha])
    return point, float(lo), float(hi)
