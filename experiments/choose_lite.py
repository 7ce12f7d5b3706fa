"""The `lite` preset, chosen by evidence: the cheapest setting with at most half of the default's network
evaluations per image whose paired Δ mean near-shift AUROC against the default (zsad's recommended
detector, diffpath_fused at 10 steps) is ≥ −0.005 as a point estimate and ≥ −0.01 at the lower end of its
95% interval, on every benchmark given. Ties in cost go to the larger worst-case Δ.

    python experiments/choose_lite.py outputs/ablate/demo_cost outputs/ablate/real32_cost

Prints a Markdown table of the candidates and the decision; if no setting qualifies, says so (then no
`lite` preset ships, and docs/speed.md says why). The intervals are `zsad ablate`'s: each set's images are
redrawn once per resample, for every pair that uses the set. A table written before that (each pair resampled
on its own, too narrow an interval, so too permissive a lower bound) is named on the first line; rerun its ablation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

POINT, LOWER = -0.005, -0.01


def load(folder: Path) -> dict:
    return json.loads((folder / "ablation.json").read_text())


def main(folders: list[str]) -> int:
    tables = {Path(f).name: load(Path(f)) for f in folders}
    names = list(tables)
    refs = {n: next(r for r in t["rows"] if r["setting"] == t["reference"]) for n, t in tables.items()}
    budget = min(r["evaluations_per_image"] for r in refs.values()) / 2
    stale = [n for n, r in refs.items() if r.get("resampling") != "per_set"]
    if stale:
        print(f"warning: {', '.join(stale)}: intervals from before per-set resampling (each pair resampled on its own: too narrow); "
              "rerun its `zsad ablate` before trusting the lower bounds\n")
    labels = [r["setting"] for r in tables[names[0]]["rows"] if all(any(x["setting"] == r["setting"] for x in t["rows"]) for t in tables.values())]
    print("| setting | network evals / image | " + " | ".join(f"Δ {n} [95% CI]" for n in names) + " | qualifies |")
    print("|---|---|" + "---|" * len(names) + "---|")
    chosen = None
    for label in sorted(labels, key=lambda lb: next(r for r in tables[names[0]]["rows"] if r["setting"] == lb)["evaluations_per_image"]):
        rows = [next(r for r in t["rows"] if r["setting"] == label) for t in tables.values()]
        cost = rows[0]["evaluations_per_image"]
        ok = cost <= budget and all(r["delta"][0] >= POINT and r["delta"][1] >= LOWER for r in rows)
        cells = [f"{r['delta'][0]:+.4f} [{r['delta'][1]:+.4f}, {r['delta'][2]:+.4f}]" for r in rows]
        print(f"| {label} | {cost} | " + " | ".join(cells) + f" | {'**yes**' if ok else 'no'} |")
        worst = min(r["delta"][0] for r in rows)
        if ok and (chosen is None or (cost, -worst) < (chosen[1], -chosen[2])):
            chosen = (label, cost, worst, rows[0]["scorer"], rows[0]["options"])
    print()
    if chosen:
        print(f"lite = {chosen[0]}: {chosen[3]} {chosen[4]}, {chosen[1]} network evaluations per image (budget {budget:g}); "
              f"worst Δ over the benchmarks {chosen[2]:+.4f}")
    else:
        print(f"No setting with at most {budget:g} network evaluations per image keeps Δ ≥ {POINT} (point) and ≥ {LOWER} (lower 95% bound) "
              "on every benchmark: no lite preset ships.")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1:]))
