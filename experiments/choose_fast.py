"""The default's cost by evidence (experiments/fast_preset/RULE.md): the cheapest candidate whose paired Δ mean image
AUROC and Δ mean AUPRO against today's default are ≥ −0.01 as point estimates and ≥ −0.03 at the lower ends of their
95% intervals, on every benchmark given. Ties in cost go to the larger worst-case point Δ.

    python experiments/choose_fast.py TABLE.json [TABLE.json ...]

Each TABLE.json is one benchmark: {"benchmark": name, "rows": [{"setting", "evaluations_per_image",
"image_auroc": [Δ, low, high], "aupro": [Δ, low, high]}, ...]} with the Δ of each candidate against the default
(`experiments/paired_ad.py`'s mean row). Prints the table and the decision.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

POINT, LOWER = -0.01, -0.03
METRICS = ("image_auroc", "aupro")


def qualifies(row: dict) -> bool:
    return all(row[m][0] >= POINT and row[m][1] >= LOWER for m in METRICS)


def choose(tables: list[dict]) -> tuple[Optional[str], list[str]]:
    """(the chosen setting or None, the Markdown lines): only settings present in every table compete."""
    names = [t["benchmark"] for t in tables]
    by_setting = [{r["setting"]: r for r in t["rows"]} for t in tables]
    settings = [s for s in by_setting[0] if all(s in b for b in by_setting)]
    lines = ["| setting | network evals / image | " + " | ".join(f"{n}: Δ image AUROC, Δ AUPRO [95% CI]" for n in names) + " | qualifies |",
             "|---|---|" + "---|" * len(names) + "---|"]
    best = None
    for s in sorted(settings, key=lambda s: by_setting[0][s]["evaluations_per_image"]):
        rows = [b[s] for b in by_setting]
        ok = all(qualifies(r) for r in rows)
        cells = [", ".join(f"{r[m][0]:+.3f} [{r[m][1]:+.3f}, {r[m][2]:+.3f}]" for m in METRICS) for r in rows]
        cost = rows[0]["evaluations_per_image"]
        lines.append(f"| {s} | {cost} | " + " | ".join(cells) + f" | {'**yes**' if ok else 'no'} |")
        worst = min(r[m][0] for r in rows for m in METRICS)
        if ok and (best is None or (cost, -worst) < (best[1], -best[2])):
            best = (s, cost, worst)
    lines.append("")
    lines.append(f"chosen: {best[0]} ({best[1]} network evaluations per image)" if best else
                 "no candidate qualifies: the default stays (docs/speed.md says so with this table)")
    return (best[0] if best else None), lines


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__)
        return 2
    _, lines = choose([json.loads(Path(p).read_text()) for p in paths])
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
