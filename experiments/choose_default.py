"""The evidence behind the readings of DiffPathV2 (the best is the fused scorer's V2 half): every reading's mean
near-shift AUROC on each benchmark and over both (the two benchmark means weighted equally), from the `zsad ablate` tables.

    python experiments/choose_default.py outputs/ablate/demo_v2 outputs/ablate/real32_v2

Rows are matched by setting label; rows of other scorers (DiffPath-6D, MSMA, ...) are listed for
comparison but never chosen. Prints a Markdown table and the reading with the best mean near AUROC.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(folder: Path) -> dict[str, dict]:
    rows = json.loads((folder / "ablation.json").read_text())["rows"]
    return {r["setting"]: r for r in rows}


def main(folders: list[str]) -> None:
    tables = {Path(f).name: load(Path(f)) for f in folders}
    names = list(tables)
    labels = [label for label in tables[names[0]] if all(label in t for t in tables.values())]
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    head = ["setting", "scorer", *[f"{n} near / far / all" for n in names], "mean near over both"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    best = None
    for label in labels:
        rows = [tables[n][label] for n in names]
        near = sum(r["mean_near"] for r in rows) / len(rows)
        cells = [" / ".join(fmt(r.get(f"mean_{g}")) for g in ("near", "far", "all")) for r in rows]
        print("| " + " | ".join([label, rows[0]["scorer"], *cells, f"**{near:.3f}**"]) + " |")
        if rows[0]["scorer"] == "diffpath_v2" and (best is None or near > best[1]):
            best = (label, near, rows[0]["options"])
    if best:
        print(f"\nbest diffpath_v2 reading by mean near-shift AUROC over {len(names)} benchmarks: {best[0]} ({best[1]:.3f}), options {best[2]}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
