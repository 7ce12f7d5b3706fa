"""Command line: `zsad train|evaluate|score|demo -c CONFIG [key=value ...]`."""

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
    from zsad.ood.benchmark import evaluate

    cfg = load_config(args.config, args.overrides, EvalConfig)
    result = evaluate(cfg)
    if result.get("table_markdown"):
        print(result["table_markdown"])
    if result.get("output_dir"):
        print(f"results written to {result['output_dir']}")
    return 0


def _cmd_score(args) -> int:
    from zsad.config import load_config
    from zsad.config.schema import ScoreConfig
    from zsad.ood.score_images import score_images

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


def _cmd_demo(args) -> int:
    from zsad.demo import run_demo

    run_demo(output_dir=args.output_dir, quick=args.quick, seed=args.seed, overrides=args.overrides)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zsad", description="Zero-shot image anomaly detection with diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_text in (
        ("train", _cmd_train, "train the base diffusion model"),
        ("evaluate", _cmd_evaluate, "run a zero-shot OOD benchmark"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("-c", "--config", required=True, help="YAML config (see conf/)")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=100")
        p.set_defaults(func=func)
    p = sub.add_parser(
        "score", help="score a folder of images with a fitted detector",
        description="Per-image anomaly scores for every image under DIR, computed exactly as the benchmark that fitted "
        "the detector computed its features (preprocessing, scorer, seed, weights all come from the detector's JSON).",
        epilog="example: zsad score photos/ --detector outputs/demo/detectors/diffpath_6d/digits --out scores.csv --heatmaps",
    )
    p.add_argument("images", nargs="?", default=None, help="folder of images (searched recursively)")
    p.add_argument("--detector", default=None, help="a detector prefix written by `zsad evaluate` (…/detectors/<scorer>/<id>)")
    p.add_argument("--out", default=None, help="CSV path (default: outputs/score/<DIR name>/scores.csv)")
    p.add_argument("--heatmaps", action="store_true", help="also write per-pixel error heat maps (diffpath_v2 detectors)")
    p.add_argument("-c", "--config", default=None, help="optional YAML config (conf/score/default.yaml holds the defaults)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. backbone.path=CKPT batch_size=16")
    p.set_defaults(func=_cmd_score)
    p = sub.add_parser("demo", help="train + evaluate end to end on built-in data (CPU, minutes)")
    p.add_argument("--quick", action="store_true", help="the same pipeline, smaller (about 3 minutes)")
    p.add_argument("--output-dir", default=None, help="default: outputs/demo (outputs/demo_quick with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="key=value overrides of conf/demo/*.yaml")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides after an option (`zsad score DIR --detector D batch_size=8`) land here
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
