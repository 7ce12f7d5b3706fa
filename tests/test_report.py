"""The results table compares like with like: published means over exactly the pairs we also measured."""

from __future__ import annotations

import pytest

from zsad.evaluation.report import mean_rows, to_markdown


def _row(ood, auroc, published=None, shift="near"):
    return {"scorer": "diffpath_v2", "id": "celeba", "ood": ood, "shift": shift, "auroc": auroc, "fpr95": 0.5, "aupr_in": 0.5, "aupr_out": 0.5,
            "auroc_ci_low": None, "auroc_ci_high": None, "published_auroc": published, "delta_auroc": None if published is None else auroc - published}


def test_published_mean_covers_only_pairs_with_both_numbers():
    rows = [_row("cifar10", 0.90, 1.000), _row("cifar100", 0.80, 0.995), _row("svhn", 0.70, 0.969), _row("textures", 0.10)]
    mean = next(m for m in mean_rows(rows) if m["ood"] == "all")
    assert mean["auroc"] == pytest.approx(0.625) and mean["n_pairs"] == 4
    assert mean["published_auroc"] == pytest.approx((1.000 + 0.995 + 0.969) / 3) and mean["n_published_pairs"] == 3
    assert mean["delta_auroc"] == pytest.approx((0.90 + 0.80 + 0.70) / 3 - (1.000 + 0.995 + 0.969) / 3)
    md = to_markdown(rows, mean_rows(rows))
    assert "Δ (ours − published)" in md and "0.988 (3 pairs)" in md and "| -0.100 |" in md


def test_no_published_column_without_published_numbers():
    rows = [_row("cifar10", 0.9), _row("svhn", 0.8)]
    mean = next(m for m in mean_rows(rows) if m["ood"] == "all")
    assert mean["published_auroc"] is None and mean["n_published_pairs"] == 0
    assert "published" not in to_markdown(rows, mean_rows(rows))
