"""What an extraction option costs in accuracy: features and AUROC of a run against the float32 run.

Two `zsad evaluate` runs of one benchmark that differ only in an option (e.g. trainer.precision):
    zsad evaluate -c conf/eval/demo.yaml                                              # float32
    zsad evaluate -c conf/eval/demo.yaml trainer.precision=bf16-mixed output_dir=outputs/demo_bf16
    python bench/precision_effect.py --reference outputs/demo --other outputs/demo_bf16 --precision bf16-mixed

Prints, per scorer, the AUROC change per pair (max |Δ| and the mean near/far change) from the two
results.json files, and the largest relative feature deviation, recomputed here on the benchmark's
own images (`--images` per set) with the reference run's backbone in both precisions.
Writes outputs/bench/precision_<name>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch


def auroc_changes(reference: Path, other: Path) -> dict:
    ref = json.loads((reference / "results.json").read_text())["rows"]
    oth = {(r["scorer"], r["id"], r["ood"]): r for r in json.loads((other / "results.json").read_text())["rows"]}
    out: dict[str, dict] = {}
    for r in ref:
        o = oth.get((r["scorer"], r["id"], r["ood"]))
        if o is None:
            continue
        s = out.setdefault(r["scorer"], {"pairs": {}, "near": [], "far": []})
        delta = o["auroc"] - r["auroc"]
        s["pairs"][f"{r['id']}→{r['ood']}"] = delta
        s[r["shift"] or "near"].append(delta)  # a benchmark without far_pairs: every pair counts as near
    for s in out.values():
        deltas = list(s["pairs"].values())
        s["max_abs_delta"] = max(abs(d) for d in deltas)
        for group in ("near", "far"):
            s[f"mean_{group}_delta"] = sum(s[group]) / len(s[group]) if s[group] else None
            del s[group]
    return out


def feature_deviation(reference: Path, precision: str, images: int) -> dict:
    from zsad.config import load_config
    from zsad.config.schema import EvalConfig
    from zsad.diffusion.loading import load_backbone_from
    from zsad.evaluation.evaluate import build_scorers, dataset_for

    cfg = load_config(str(reference / "config.yaml"), [], EvalConfig)
    backbone = load_backbone_from(cfg.backbone, fast_path=bool(cfg.trainer.fast_path))
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}[precision]
    device = "cuda" if str(cfg.trainer.accelerator) in ("gpu", "cuda") and torch.cuda.is_available() else "cpu"
    backbone = backbone.to(device)
    size = int(cfg.image_size or backbone.image_size)
    out = {}
    for scorer in build_scorers(cfg):
        worst = 0.0
        for alias in dict.fromkeys([*cfg.id, *cfg.ood]):
            ds = dataset_for(cfg, alias, str(cfg.eval_split), size)
            x = torch.stack([ds[i][0] for i in range(min(images, len(ds)))]).to(device)
            runs = []
            for ctx in (contextlib.nullcontext(), torch.autocast(device, dtype=dtype)):
                with ctx:
                    runs.append(scorer(backbone, x, seed=int(cfg.seed)).double())
            scale = runs[0].abs().amax(dim=0).clamp_min(1e-12)  # per feature: relative to its largest magnitude
            worst = max(worst, float(((runs[1] - runs[0]).abs() / scale).max()))
        out[scorer.name] = worst
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, required=True, help="output_dir of the float32 run")
    parser.add_argument("--other", type=Path, required=True, help="output_dir of the run with the option")
    parser.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "16-mixed"])
    parser.add_argument("--images", type=int, default=32, help="images per set for the feature deviation")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = {"auroc_change": auroc_changes(args.reference, args.other),
              "max_relative_feature_deviation": feature_deviation(args.reference, args.precision, args.images),
              "note": "feature deviation: max over images and features of |other − fp32| / max|fp32| of that feature"}
    out = args.out or Path("outputs/bench") / f"precision_{args.precision}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    fmt = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
    for name, s in result["auroc_change"].items():
        dev = result["max_relative_feature_deviation"].get(name)
        print(f"{name:>12}: max |ΔAUROC| {s['max_abs_delta']:.4f}, mean Δ near {fmt(s['mean_near_delta'], '+.4f')}, "
              f"far {fmt(s['mean_far_delta'], '+.4f')}, max rel. feature deviation {fmt(dev, '.1e')}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
