"""OOD metrics with one sign convention (design.md §2): scores are higher = more anomalous, OOD is the
positive class for AUROC, FPR@95TPR and AUPR-Out; ID is positive for AUPR-In."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc, binary_average_precision, binary_roc


def _labelled(id_scores, ood_scores) -> tuple[torch.Tensor, torch.Tensor]:
    s_id = torch.as_tensor(np.asarray(id_scores, dtype=np.float64))
    s_ood = torch.as_tensor(np.asarray(ood_scores, dtype=np.float64))
    if s_id.numel() == 0 or s_ood.numel() == 0:
        raise ValueError("OOD metrics need at least one ID and one OOD score.")
    if not (torch.isfinite(s_id).all() and torch.isfinite(s_ood).all()):
        raise ValueError("OOD metrics got non-finite scores.")
    scores = torch.cat([s_id, s_ood])
    labels = torch.cat([torch.zeros(len(s_id), dtype=torch.long), torch.ones(len(s_ood), dtype=torch.long)])
    return scores, labels


def auroc(id_scores, ood_scores) -> float:
    """Area under ROC with OOD as positive (0.5 = chance, 1 = every OOD scored above every ID)."""
    scores, labels = _labelled(id_scores, ood_scores)
    return float(binary_auroc(scores, labels, validate_args=False))


def fpr_at_tpr(id_scores, ood_scores, tpr: float = 0.95) -> float:
    """Fraction of ID images scored at or above the highest threshold that flags `tpr` of OOD images."""
    scores, labels = _labelled(id_scores, ood_scores)
    fpr, tpr_curve, _ = binary_roc(scores, labels, validate_args=False)
    reached = tpr_curve >= tpr - 1e-12
    return float(fpr[reached].min())


def ood_metrics(id_scores, ood_scores) -> dict[str, float]:
    """{"auroc", "fpr95", "aupr_in", "aupr_out"} for one (ID, OOD) pair."""
    scores, labels = _labelled(id_scores, ood_scores)
    return {
        "auroc": float(binary_auroc(scores, labels, validate_args=False)),
        "fpr95": fpr_at_tpr(id_scores, ood_scores, 0.95),
        "aupr_in": float(binary_average_precision(-scores, 1 - labels, validate_args=False)),
        "aupr_out": float(binary_average_precision(scores, labels, validate_args=False)),
    }


def bootstrap_auroc_ci(id_scores, ood_scores, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval for AUROC, resampling ID and OOD sets separately (stratified)."""
    s_id = np.asarray(id_scores, dtype=np.float64)
    s_ood = np.asarray(ood_scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    labels = torch.cat([torch.zeros(len(s_id), dtype=torch.long), torch.ones(len(s_ood), dtype=torch.long)])
    values = np.empty(n_boot)
    for b in range(n_boot):
        sample = np.concatenate([s_id[rng.integers(0, len(s_id), len(s_id))], s_ood[rng.integers(0, len(s_ood), len(s_ood))]])
        values[b] = float(binary_auroc(torch.from_numpy(sample), labels, validate_args=False))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)
