"""Paired Δ (B − A) of image AUROC, pixel AUROC and AUPRO between two `zsad test` runs on the same test images,
with 95% paired bootstrap intervals over images, per category and for the mean over categories (issue 26 §3).

    python experiments/paired_ad.py OUT_A OUT_B [--method-a M] [--method-b M] [--resamples 1000] [--seed 0]

Both runs must have been made with per-image pixel histograms on (`IndustrialSettings(pixel_store=True)`: each
writes pixel_store/<category>/<method>.npz). A is the reference (today's default), B the candidate. The method of a
run is its first row in results.json (its first scorer) unless named. docs/industrial.md explains the interval.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from zsad.evaluation.pixel_bootstrap import PAIRED_METRICS, PairedDelta, load_runs, paired_bootstrap_categories

NAMES = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO"}


def first_method(out: Path) -> str:
    return json.loads((out / "results.json").read_text())["rows"][0]["method"]


def cell(d: PairedDelta) -> str:
    if d.delta is None:
        return "–"
    interval = "" if d.low is None else f" [{d.low:+.3f}, {d.high:+.3f}]"
    return f"{d.a:.3f} → {d.b:.3f}: {d.delta:+.3f}{interval}"


def paired_table(out_a: Path, out_b: Path, method_a: str | None = None, method_b: str | None = None, resamples: int = 1000,
                 seed: int = 0) -> str:
    """The Markdown table: a row per category and one for the mean over the categories both runs have."""
    method_a, method_b = method_a or first_method(out_a), method_b or first_method(out_b)
    runs_a, runs_b = load_runs(out_a, method_a), load_runs(out_b, method_b)
    common = [c for c in runs_a if c in runs_b]
    if not common:
        raise SystemExit(f"no category in both runs: {sorted(runs_a)} vs {sorted(runs_b)}")
    per_category, mean = paired_bootstrap_categories({c: (runs_a[c], runs_b[c]) for c in common}, resamples, seed)
    lines = [f"A = {out_a} ({method_a}), B = {out_b} ({method_b}); Δ = B − A with paired 95% bootstrap intervals over test images "
             f"({resamples} resamples, stratified by label, seed {seed})", "",
             "| category | images (defective) | " + " | ".join(f"{NAMES[m]}: A → B: Δ [95% CI]" for m in PAIRED_METRICS) + " |",
             "|---|---|" + "---|" * len(PAIRED_METRICS)]
    for c in common:
        run = runs_a[c]
        lines.append(f"| {c} | {len(run.labels)} ({int(run.labels.sum())}) | " + " | ".join(cell(per_category[c][m]) for m in PAIRED_METRICS) + " |")
    lines.append(f"| **mean** (n = {len(common)}) | | " + " | ".join(cell(mean[m]) for m in PAIRED_METRICS) + " |")
    left_out = sorted(set(runs_a) ^ set(runs_b))
    if left_out:
        lines += ["", f"Left out (in one run only): {', '.join(left_out)}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_a", type=Path, help="reference `zsad test` output folder (A)")
    parser.add_argument("out_b", type=Path, help="candidate `zsad test` output folder (B)")
    parser.add_argument("--method-a", help="method of A (default: its first row)")
    parser.add_argument("--method-b", help="method of B (default: its first row)")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(paired_table(args.out_a, args.out_b, args.method_a, args.method_b, args.resamples, args.seed), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
