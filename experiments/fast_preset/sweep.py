"""The sweep behind experiments/fast_preset/RULE.md: today's default and the cheaper candidates on both defect
benchmarks at 128 px with the demo model (16 px tiles: as many per side as 256 px with 32 px tiles), each with
per-image pixel histograms; then the paired Δ of every candidate against the default and the rule's decision.

    python experiments/fast_preset/sweep.py --backbone CKPT [--out outputs/fast_preset] [--settings default,fast,...] [--size 128]

`--size 32 --settings default,upsampled=2x --out outputs/working_size` is the working-size ablation (issue 26 §1): the
benchmarks at 32 px, scored at their own size (the default's rule) and upsampled 2×. `--settings default,softmin_knn`
is the detector-kind ablation (experiments/detector_kind/RULE.md): UFCOD's soft-min kNN on the same tile features.
Settings that cost more than the default or change what is fitted are ablation rows, never candidates of the rule,
and only run when named. A folder's benchmarks keep one size.

Writes OUT/data/{ad_demo,perlin} (the benchmarks), OUT/<benchmark>/<setting>/ (`zsad test` folders),
OUT/<benchmark>.json (choose_fast.py's tables), OUT/times.json and OUT/results.md (the tables and the decision).
A setting already run (its results.json exists) is not run again, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from choose_fast import choose  # noqa: E402

from zsad.data.defects import MARKER, make_defect_benchmark  # noqa: E402
from zsad.data.perlin_defects import make_perlin_benchmark  # noqa: E402
from zsad.evaluation.industrial import IndustrialSettings, run_test  # noqa: E402
from zsad.evaluation.pixel_bootstrap import load_runs, paired_bootstrap_categories  # noqa: E402

SIZE, TILE = 128, 16
SCORER = "diffpath_fused"
# coins_other is left out: it refits coins' fit images and tests shifted normals (a robustness row, not a defect one)
AD_DEMO_CATEGORIES = ["brick", "grass", "gravel", "tissue", "coins"]


@dataclass(frozen=True)
class Setting:
    stride: int  # tile stride in px with 16 px tiles
    steps: Optional[int]  # None: the scorer's own (10)
    upsample: int = 1  # working size = images' size × this; 1: the default's own-size rule (no --working-size)
    detector_kind: Optional[str] = None  # None: the scorer's own (a Gaussian mixture); softmin_knn: UFCOD's detector
    shots: Optional[int] = None  # fit on this many normal images only (calibration unchanged)

    @property
    def ablation(self) -> bool:
        """Not a candidate of the fast preset's rule: it costs more (upsampled) or changes what is fitted."""
        return self.upsample > 1 or self.detector_kind is not None or self.shots is not None


SETTINGS = {
    "default": Setting(TILE // 2, None),  # the reference: today's default after the blend fix
    "fast": Setting(TILE, 2),  # --preset fast
    "stride=tile": Setting(TILE, None),
    "steps=2": Setting(TILE // 2, 2),
    "steps=3": Setting(TILE // 2, 3),
    "steps=5": Setting(TILE // 2, 5),
    "upsampled=2x": Setting(TILE // 2, None, upsample=2),  # an ablation row: the working-size rule against upsampling
    # ablation rows of experiments/detector_kind/RULE.md: UFCOD's detector, and both detectors fitted on 20 normal images
    "softmin_knn": Setting(TILE // 2, None, detector_kind="softmin_knn"),
    "shots=20": Setting(TILE // 2, None, shots=20),
    "softmin_knn_shots=20": Setting(TILE // 2, None, detector_kind="softmin_knn", shots=20),
}


def make_benchmarks(root: Path, size: int = SIZE) -> dict[str, Path]:
    """Both benchmarks at `size` px, 60 fit images, 20 normal test images and 10 per defect family per category."""
    counts = dict(size=size, n_train=60, n_test_good=20, n_test_defect_per_family=10, seed=0)
    paths = {"ad_demo": root / "ad_demo", "perlin": root / "perlin"}
    for path, last in ((paths["ad_demo"], "coins"), (paths["perlin"], "terrain")):
        marker = path / last / MARKER  # results beside these benchmarks would be reused: one size per folder
        if marker.is_file() and json.loads(marker.read_text())["size"] != size:
            sys.exit(f"{path} holds the benchmark at {json.loads(marker.read_text())['size']} px, not {size} px: pass another --out.")
    if not (paths["ad_demo"] / "coins").is_dir():
        make_defect_benchmark(paths["ad_demo"], AD_DEMO_CATEGORIES, **counts)
    if not (paths["perlin"] / "terrain").is_dir():
        make_perlin_benchmark(paths["perlin"], **counts)
    return paths


def run_setting(data: Path, out: Path, backbone: str, setting: Setting, cache: Path, batch_size: int, size: int = SIZE) -> float:
    """`zsad test` of one setting with per-image pixel histograms; returns its wall seconds (0 when already run)."""
    if (out / "results.json").is_file():
        return 0.0
    working_size = None if setting.upsample == 1 else size * setting.upsample  # None: each category's own size
    settings = IndustrialSettings(scorers=(SCORER,), detector_kind=setting.detector_kind, shots=setting.shots, working_size=working_size,
                                  tile_stride=setting.stride, blend="max",
                                  scorer_options=None if setting.steps is None else {"steps": setting.steps},
                                  baselines=False, variants=False, examples=0, pixel_store=True, device="cpu", batch_size=batch_size,
                                  cache_dir=str(cache))
    start = time.time()
    run_test(f"mvtec:{data}", out, backbone=backbone, settings=settings)
    return time.time() - start


def evaluations_per_image(out: Path) -> int:
    rows = json.loads((out / "results.json").read_text())["rows"]
    return int(next(r["evaluations_per_image"] for r in rows if r["method"] == SCORER))


def paired_rows(bench: Path, names: list[str], resamples: int) -> tuple[list[dict], dict]:
    """choose_fast's rows (Δ and interval of mean image AUROC and AUPRO against "default") and the absolute means."""
    reference = load_runs(bench / "default", SCORER)
    rows, means = [], {}
    for name in names:
        runs = load_runs(bench / name, SCORER)
        common = [c for c in reference if c in runs]
        _, mean = paired_bootstrap_categories({c: (reference[c], runs[c]) for c in common}, resamples, 0)
        means[name] = {m: mean[m].b for m in ("image_auroc", "aupro")}
        if name == "default":
            continue
        rows.append({"setting": name, "evaluations_per_image": evaluations_per_image(bench / name),
                     **{m: [mean[m].delta, mean[m].low, mean[m].high] for m in ("image_auroc", "aupro")}})
    return rows, means


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", required=True, help="the demo model's checkpoint (make demo / make ad-demo train it)")
    parser.add_argument("--out", type=Path, default=Path("outputs/fast_preset"))
    candidates = [name for name, setting in SETTINGS.items() if not setting.ablation]  # ablation rows only when named
    parser.add_argument("--settings", default=",".join(candidates), help=f"comma-separated, from {', '.join(SETTINGS)}; default first")
    parser.add_argument("--benchmarks", default="ad_demo,perlin")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--size", type=int, default=SIZE, help="the benchmarks' image size (64 for the working-size ablation)")
    args = parser.parse_args(argv)
    names = [s for s in args.settings.split(",") if s]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown or names[:1] != ["default"]:
        parser.error(f"settings must start with default and come from {', '.join(SETTINGS)}; got {args.settings}")
    out = args.out
    benches = {k: v for k, v in make_benchmarks(out / "data", args.size).items() if k in args.benchmarks.split(",")}
    times_path = out / "times.json"
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}
    for name in names:  # setting by setting, so that an interrupted sweep has the default and the first candidates on both
        for bench, data in benches.items():
            seconds = run_setting(data, out / bench / name, args.backbone, SETTINGS[name], out / "feature_cache", args.batch_size,
                                   args.size)
            if seconds:
                times[f"{bench}/{name}"] = round(seconds, 1)
                times_path.write_text(json.dumps(times, indent=1) + "\n")
                print(f"[sweep] {bench}/{name}: {seconds:.0f} s", flush=True)
    ablation_only = all(SETTINGS[n].ablation for n in names[1:])
    title = (f"Ablation rows at {args.size} px: {', '.join(names[1:])} against the default" if ablation_only
             else f"The fast-preset sweep at {args.size} px (experiments/fast_preset/RULE.md)")
    tables, lines = [], [f"# {title}", ""]
    for bench in benches:
        rows, means = paired_rows(out / bench, names, args.resamples)
        table = {"benchmark": bench, "rows": rows}
        (out / f"{bench}.json").write_text(json.dumps(table, indent=1) + "\n")
        tables.append(table)
        lines += [f"## {bench}: mean over categories", "", "| setting | network evals / image | image AUROC | AUPRO | wall s |", "|---|---|---|---|---|"]
        for name in names:
            lines.append(f"| {name} | {evaluations_per_image(out / bench / name)} | {means[name]['image_auroc']:.3f} | "
                         f"{means[name]['aupro']:.3f} | {times.get(f'{bench}/{name}', '–')} |")
        lines.append("")
    # only cheaper settings of the same detector compete; the others are ablation rows, shown with their paired Δ
    ablation = [[r for r in t["rows"] if SETTINGS[r["setting"]].ablation] for t in tables]
    candidates = [{**t, "rows": [r for r in t["rows"] if not SETTINGS[r["setting"]].ablation]} for t in tables]
    no_candidate = "no candidate of experiments/fast_preset/RULE.md was run (ablation rows only): no decision of that rule"
    decision = choose(candidates)[1] if any(t["rows"] for t in candidates) else [no_candidate]
    for t, rows in zip(tables, ablation):
        decision += [f"* ablation on {t['benchmark']}: {r['setting']} ({r['evaluations_per_image']} evaluations) against the default: "
                     + ", ".join(f"Δ {m} {r[m][0]:+.3f} [{r[m][1]:+.3f}, {r[m][2]:+.3f}]" for m in ("image_auroc", "aupro")) for r in rows]
    lines += ["## Paired Δ against the default (95% intervals) and the rule", "", *decision]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
