"""Command line: `zsad train|evaluate|score|demo|dashboard …`; `zsad COMMAND --help` shows an example."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from zsad.errors import ZsadError


def _cmd_train(args) -> int:
    from zsad.config import load_config
    from zsad.config.schema import TrainConfig
    from zsad.training.train import train

    cfg = load_config(args.config, args.overrides, TrainConfig)
    result = train(cfg)
    if result["preempted"]:
        print(f"training stopped for preemption at step {result['global_step']}; it resumes from {result['last_checkpoint']}")
    else:
        print(f"training finished at step {result['global_step']}; checkpoint: {result['last_checkpoint']}")
    return 0


def _cmd_evaluate(args) -> int:
    from zsad.config import load_config
    from zsad.config.schema import EvalConfig
    from zsad.evaluation.evaluate import evaluate
    from zsad.evaluation.summary import format_summary

    cfg = load_config(args.config, args.overrides, EvalConfig)
    result = evaluate(cfg)
    if result.get("table_markdown"):
        print(result["table_markdown"])
        print(format_summary(result["summary"]))
    return 0


def _cmd_score(args) -> int:
    from zsad.config import load_config
    from zsad.config.schema import ScoreConfig
    from zsad.detection.score import score_images

    overrides = list(args.overrides)
    if args.images is not None and "=" in args.images:  # `zsad score -c C images=DIR …` (the older form)
        overrides.insert(0, args.images)
        args.images = None
    for key, value in (("images", args.images), ("detector", args.detector), ("output", args.out)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.heatmaps:
        overrides.append("heatmaps=true")
    cfg = load_config(args.config, overrides, ScoreConfig)
    path = score_images(cfg)
    print(f"scores written to {path}")
    return 0


def _cmd_ablate(args) -> int:
    from zsad.config import load_config
    from zsad.config.schema import AblateConfig
    from zsad.evaluation.ablate import ablate

    result = ablate(load_config(args.config, args.overrides, AblateConfig))
    print(result["table_markdown"])
    print(f"ablation table, plot and per-setting results in {result['output_dir']}")
    return 0


def _cmd_demo(args) -> int:
    from zsad.demo import run_demo

    run_demo(output_dir=args.output_dir, quick=args.quick, seed=args.seed, overrides=args.overrides)
    return 0


def _cmd_dashboard(args) -> int:
    from zsad.dashboard import create_dashboard

    create_dashboard(entity=args.entity, project=args.project, dry_run=args.dry_run, out=args.out, config=args.config)
    return 0


def _version() -> str:
    from zsad import __version__

    return f"zsad {__version__}"


COMMANDS = {
    "train": ("train the base diffusion model", "zsad train -c conf/train/celeba32.yaml data.root=data/celeba trainer.devices=4"),
    "evaluate": ("run a zero-shot OOD benchmark", "zsad evaluate -c conf/eval/paper12.yaml backbone.path=outputs/train/celeba32/checkpoints/last.ckpt"),
    "ablate": ("run a benchmark for many settings of one scorer: one table, one plot", "zsad ablate -c conf/ablate/demo_v2.yaml"),
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    noise = common.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="store_true", help="also print every Lightning message")
    noise.add_argument("-q", "--quiet", action="store_true", help="print only errors, the final table and summary")
    parser = argparse.ArgumentParser(
        prog="zsad", description="Zero-shot image anomaly detection with diffusion models.",
        epilog="start here: zsad demo --quick   (set ZSAD_DEBUG=1 to see the full traceback of an error)",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, example) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=f"example: {example}", parents=[common])
        p.add_argument("-c", "--config", required=True, help="YAML config (see conf/)")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=100")
        p.set_defaults(func={"train": _cmd_train, "evaluate": _cmd_evaluate, "ablate": _cmd_ablate}[name])
    p = sub.add_parser(
        "score", help="score a folder of images with a fitted detector", parents=[common],
        description="Per-image anomaly scores for every image under DIR, computed exactly as the benchmark that fitted "
        "the detector computed its features (preprocessing, scorer, seed, weights all come from the detector's JSON).",
        epilog="example: zsad score photos/ --detector outputs/demo/detectors/diffpath_v2/digits --out scores.csv --heatmaps",
    )
    p.add_argument("images", nargs="?", default=None, help="folder of images (searched recursively)")
    p.add_argument("--detector", default=None, help="a detector prefix written by `zsad evaluate` (…/detectors/<scorer>/<id>)")
    p.add_argument("--out", default=None, help="CSV path (default: outputs/score/<DIR name>/scores.csv)")
    p.add_argument("--heatmaps", action="store_true", help="also write per-pixel error heat maps (diffpath_v2 detectors)")
    p.add_argument("-c", "--config", default=None, help="optional YAML config (conf/score/default.yaml holds the defaults)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. backbone.path=CKPT batch_size=16")
    p.set_defaults(func=_cmd_score)
    p = sub.add_parser(
        "demo", help="train + evaluate end to end on built-in data (CPU, minutes)", parents=[common],
        description="Train a small base model on the built-in 'shapes' set (conf/train/demo.yaml), then evaluate three "
        "scorers zero-shot on every ordered pair of digits, photos, clouds and noise (conf/eval/demo.yaml). "
        "Offline, on the CPU: about 4 minutes on 2 cores (about 2 with --quick).",
        epilog="example: zsad demo --quick eval.bootstrap=50 train.total_images=12000",
    )
    p.add_argument("--quick", action="store_true", help="the same pipeline, smaller (about 2 minutes on 2 CPU cores)")
    p.add_argument("--output-dir", default=None, help="default: outputs/demo (outputs/demo_quick with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="train.KEY=VALUE overrides conf/train/demo.yaml, eval.KEY=VALUE conf/eval/demo.yaml")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser(
        "dashboard", help="create the W&B workspace and report template for zsad runs", parents=[common],
        description="Build a saved W&B workspace (results table, per-pair AUROC per scorer, ROC and histogram images, "
        "training loss, images/s and sample grids) and a report template for a benchmark run, with W&B's own API "
        "(wandb-workspaces). --dry-run writes their definitions as JSON instead (offline).",
        epilog="example: zsad dashboard --entity my-team --project zsad   |   zsad dashboard --project zsad --dry-run",
    )
    p.add_argument("--entity", default=None, help="W&B entity (team or user); default: your default entity")
    p.add_argument("--project", default="zsad", help="W&B project (default: zsad)")
    p.add_argument("--dry-run", action="store_true", help="write the definitions as JSON, contact nothing")
    p.add_argument("--out", default="outputs/dashboard", help="folder for the --dry-run JSON (default: outputs/dashboard)")
    p.add_argument("-c", "--config", default=None, help="benchmark config whose scorers and pairs the panels show (default: conf/eval/paper12.yaml)")
    p.set_defaults(func=_cmd_dashboard, overrides=[])
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides after an option (`zsad score DIR --detector D batch_size=8`) land here
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from zsad.utils.console import setup_console

    setup_console(0 if args.quiet else 2 if args.verbose else None)
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        return args.func(args)
    except ZsadError as err:
        if os.environ.get("ZSAD_DEBUG"):
            raise
        print(f"zsad {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
