"""SCOPED's open readings side by side (docs/method.md §3.6): mean near / far AUROC of the `scoped_kde` detector for
each statistic × level choice × bandwidth, on one benchmark's cached SCOPED features (run the benchmark first).
Only the detector is refitted; every row scores the same images.

    python experiments/scoped/readings.py [-c conf/eval/demo.yaml] [--out outputs/scoped_readings/demo] [key=value ...]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

VARIANTS = {
    "statistic": ["ratio", "hyvarinen", "both"],
    "levels": [("stein", 2), ("spread", 2), ("all", None)],
    "bandwidth": ["scott", 0.5],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", default="conf/eval/demo.yaml")
    parser.add_argument("--out", default="outputs/scoped_readings/demo")
    parser.add_argument("--levels", type=int, default=6)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from zsad.config import load_config
    from zsad.config.schema import EvalConfig
    from zsad.evaluation.evaluate import extract, prepare
    from zsad.evaluation.metrics import ood_metrics
    from zsad.scoring.scoped_detector import ScopedKDEDetector

    out = Path(args.out)
    spec = json.dumps([{"name": "scoped", "options": {"levels": args.levels}}])
    bench = load_config(args.config, list(args.overrides), EvalConfig)  # its model and feature cache, read where the benchmark wrote them
    cfg = load_config(args.config, [*args.overrides, f"scorers={spec}", "logger=none", f"backbone.path={bench.backbone.path}",
                                    f"cache_dir={bench.cache_dir}", f"output_dir={out / 'run'}"], EvalConfig)
    features = extract(prepare(cfg))
    far = {tuple(p) for p in cfg.far_pairs}
    lines = ["| statistic | levels kept | bandwidth | mean near AUROC | mean far AUROC | levels per ID set |", "|---|---|---|---|---|---|"]
    records = []
    for stat, (selection, select), bandwidth in itertools.product(*VARIANTS.values()):
        groups: dict[str, list[float]] = {"near": [], "far": []}
        chosen = {}
        for id_alias in cfg.id:
            det = ScopedKDEDetector(statistic=stat, select=select, selection=selection, bandwidth=bandwidth)
            det.fit(features[("scoped", id_alias, cfg.fit_split)].features)
            chosen[id_alias] = det.levels_.tolist()
            id_scores = det.score(features[("scoped", id_alias, cfg.eval_split)].features)
            for ood in cfg.ood:
                if ood != id_alias:
                    auroc = ood_metrics(id_scores, det.score(features[("scoped", ood, cfg.eval_split)].features))["auroc"]
                    groups["far" if (id_alias, ood) in far else "near"].append(auroc)
        near, far_mean = (float(np.mean(v)) if v else float("nan") for v in (groups["near"], groups["far"]))
        kept = f"{select} by {selection}" if select else "all"
        lines.append(f"| {stat} | {kept} | {bandwidth} | {near:.3f} | {far_mean:.3f} | {chosen} |")
        records.append({"statistic": stat, "selection": selection, "select": select, "bandwidth": bandwidth, "near": near,
                        "far": far_mean, "levels": chosen})
    out.mkdir(parents=True, exist_ok=True)
    (out / "readings.md").write_text("\n".join(lines) + "\n")
    (out / "readings.json").write_text(json.dumps(records, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
