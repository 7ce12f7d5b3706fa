"""Command line: `zsad train|evaluate|score|demo|dashboard …`; `zsad COMMAND --help` shows an example."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import OmegaConf

from zsad.errors import ConfigError, ZsadError


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
    from zsad.detection.score import score_folder

    overrides = list(args.overrides)
    if args.images is not None and "=" in args.images:  # `zsad score -c C images=DIR …` (the older form)
        overrides.insert(0, args.images)
        args.images = None
    for key, value in (("images", args.images), ("detector", args.detector), ("output", args.out), ("false_alarm_rate", args.false_alarm_rate),
                       ("device", args.device), ("batch_size", args.batch_size)):
        if value is not None:
            overrides.append(f"{key}={value}")
    for flag in ("heatmaps", "skip_corrupt"):
        if getattr(args, flag):
            overrides.append(f"{flag}=true")
    cfg = load_config(args.config, overrides, ScoreConfig)
    for key in ("images", "detector"):
        if OmegaConf.is_missing(cfg, key) or not cfg[key]:
            raise ConfigError(f"{key} is not set: zsad score DIR --detector DETECTOR")
    backbone = None if OmegaConf.is_missing(cfg.backbone, "path") or not cfg.backbone.path else str(cfg.backbone.path)
    summary = score_folder(cfg.images, cfg.detector, cfg.output, cfg.false_alarm_rate, bool(cfg.heatmaps), int(cfg.batch_size), str(cfg.device),
                           backbone, bool(cfg.skip_corrupt))
    print("\n".join(summary.lines()))
    print(f"scores written to {summary.csv}")
    return 0


# The flags of `zsad fit` and `zsad test` that are DetectorSettings fields; a flag left unset (None) takes the field's default.
DETECTOR_FLAGS = ("scorer", "detector_kind", "false_alarm_rate", "shots", "working_size", "tile_stride", "preset", "map_combination", "aggregation", "blend",
                  "bit_depth", "tile_position", "skip_corrupt", "device", "batch_size", "cache_dir")


def _detector_flags(args) -> dict:
    """The detector settings given on the command line (flags left at None, or absent from this command, are not)."""
    flags = {name: getattr(args, name) for name in DETECTOR_FLAGS if getattr(args, name, None) is not None}
    if getattr(args, "steps", None) is not None:
        flags["scorer_options"] = {"steps": _checked_steps(args)}
    return flags


def _checked_steps(args) -> int:
    """--steps, refused before any work for a scorer that has no trajectory (msma, scoped: noise levels instead)."""
    import dataclasses

    from zsad.scoring.scorers import RECOMMENDED_SCORER, SCORERS

    names = [s.strip() for s in (getattr(args, "scorers", None) or getattr(args, "scorer", None) or RECOMMENDED_SCORER).split(",") if s.strip()]
    for name in names:
        if name in SCORERS and "steps" not in {f.name for f in dataclasses.fields(SCORERS[name])}:
            raise ConfigError(f"--steps sets trajectory steps; scorer '{name}' has none (it scores noise levels). Leave --steps off "
                              f"for it, or test it in a run of its own.")
    if args.steps < 1:
        raise ConfigError(f"--steps must be at least 1; got {args.steps}.")
    return int(args.steps)


def _cmd_fit(args) -> int:
    from zsad.detection.fit import fit_folder
    from zsad.detection.settings import DetectorSettings

    settings = DetectorSettings(**_detector_flags(args))
    _, lines = fit_folder(args.normal_dir, args.out, force=args.force, backbone=args.backbone, settings=settings)
    print("\n".join(lines))
    return 0


def _cmd_test(args) -> int:
    from zsad.config.schema import LoggerConfig
    from zsad.evaluation.industrial import IndustrialSettings, run_test

    flags = {k: v for k, v in _detector_flags(args).items() if k != "scorer"}
    scorers = tuple(s.strip() for s in (args.scorers or "").split(",") if s.strip())
    settings = IndustrialSettings(**flags, scorers=scorers, metric_size=args.metric_size, pixel_store=args.pixel_store, baselines=not args.no_baselines)
    logger = OmegaConf.merge(OmegaConf.structured(LoggerConfig), {"kind": args.logger})
    result = run_test(args.data, args.out, backbone=args.backbone, detector=args.detector, settings=settings, logger_cfg=logger)
    print(result["table_markdown"])
    print(f"table {Path(result['output_dir']) / 'results.md'} (+ .csv, .json) · overlays {Path(result['output_dir']) / 'overlays'}/")
    if result.get("wandb") and result["wandb"].get("sync"):
        print(f"W&B: offline run; upload it with: {result['wandb']['sync']}")
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


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Where and how `zsad fit` and `zsad test` run."""
    p.add_argument("--device", default=None, help="auto (a GPU if there is one; default), cpu, cuda, cuda:1, …")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default 16; tiles of a batch share network calls)")
    p.add_argument("--cache-dir", default=None, help="feature cache (default outputs/feature_cache)")


def _add_detector_kind_option(p: argparse.ArgumentParser) -> None:
    """What `zsad fit` and `zsad test` fit on the tile features."""
    p.add_argument("--detector-kind", choices=["gmm", "softmin_knn"], default=None,
                   help="fitted on the tile features: gmm (a Gaussian mixture) or softmin_knn (UFCOD's soft-min kNN, 100 references picked "
                   "per tile position); default: the scorer's own (gmm for diffpath_fused)")


def _add_blend_option(p: argparse.ArgumentParser) -> None:
    """The options of how images become maps, shared by `zsad fit` and `zsad test`."""
    p.add_argument("--blend", choices=["max", "hann", "mean"], default=None,
                   help="how overlapping tile scores blend into the map: the per-pixel maximum (default), Hann-weighted, or the plain mean "
                   "(position-biased)")
    p.add_argument("--bit-depth", type=int, choices=[8, 10, 12, 14, 16], default=None,
                   help="bits per sample of the images (default: from the fit images' largest value, e.g. 12 for a 16-bit file holding 0…4095); "
                   "recorded in the detector and used for every image it scores")


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
        "fit", help="fit a detector on a folder of normal images, with a false-alarm rate that holds", parents=[common],
        description="Split the normal images by hashed file name into a fit part and a calibration part, fit the detector on the "
        "fit part's diffusion features (per tile of the image resized to --working-size), and calibrate on the rest: a new normal "
        "image is flagged with probability at most --false-alarm-rate. Writes one folder: detector, feature recipe, calibration "
        "scores, threshold, map settings and card.md.",
        epilog="example: zsad fit good_parts/ -o detectors/parts --backbone diffpath-celeba32 --false-alarm-rate 0.01",
    )
    p.add_argument("normal_dir", help="folder of normal images (searched recursively)")
    p.add_argument("-o", "--out", required=True, help="detector folder to write (not inside NORMAL_DIR)")
    p.add_argument("--backbone", default="diffpath-celeba32", help="a checkpoint file, hf://OWNER/REPO/FILE[@REV] or a known name "
                   "(diffpath-celeba32, openai-imagenet64, zsad-demo); default: diffpath-celeba32")
    p.add_argument("--scorer", default=None, help="default: zsad's recommended detector (diffpath_fused)")
    p.add_argument("--false-alarm-rate", type=float, default=None, help="α: the share of normal images flagged, at most (default 0.05)")
    p.add_argument("--shots", type=int, default=None, help="fit on N normal images only (calibration stays the same)")
    p.add_argument("--working-size", type=int, default=None, help="the longer side images are resized to (aspect ratio kept) before they are "
                   "cut into tiles at the backbone's resolution (default: the images' median longer side, at most 256; the backbone's own size = "
                   "one tile per image)")
    p.add_argument("--tile-stride", type=int, default=None, help="pixels between tiles (default: half a tile)")
    p.add_argument("--preset", choices=["default", "fast"], default=None, help="fast: tiles every tile and 2 trajectory steps, "
                   "about 9× less work than the default (docs/speed.md gives its cost in AUROC); explicit --tile-stride and --steps win")
    p.add_argument("--steps", type=int, default=None, help="the scorer's trajectory steps (default: the preset's; 5 for diffpath_fused, "
                   "which `zsad evaluate` runs at 10)")
    p.add_argument("--map-combination", choices=["tile", "tile+pixel", "pixel"], default=None,
                   help="anomaly map: tile scores, tile scores + the scorer's per-pixel maps (default where it has them), or pixel maps")
    p.add_argument("--aggregation", choices=["max", "top_k"], default=None,
                   help="image score: the maximum of the tile map (default), or the mean of its top 10%% of pixels")
    p.add_argument("--tile-position", action="store_true", help="give the detector each tile's position too (objects at a fixed place)")
    _add_detector_kind_option(p)
    _add_blend_option(p)
    _add_run_options(p)
    p.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images (counted) instead of stopping at the first")
    p.add_argument("--force", action="store_true", help="replace an existing detector folder")
    p.set_defaults(func=_cmd_fit, overrides=[])
    p = sub.add_parser(
        "score", help="score a folder of images: anomaly scores, p-values, decisions, overlays", parents=[common],
        description="One CSV row per image under DIR (file, anomaly_score, p_value, is_anomaly, features), in the folder's order, "
        "computed exactly as the detector's features were (its recorded recipe). With a `zsad fit` detector, p_value is the "
        "split-conformal p-value and is_anomaly = p_value ≤ the false-alarm rate.",
        epilog="example: zsad score to_check/ --detector detectors/parts --heatmaps --out outputs/score/to_check",
    )
    p.add_argument("images", nargs="?", default=None, help="folder of images (searched recursively)")
    p.add_argument("--detector", default=None, help="a folder written by `zsad fit`, or a prefix written by `zsad evaluate` (…/detectors/<scorer>/<id>)")
    p.add_argument("--out", default=None, help="CSV path or folder (default: outputs/score/<DIR name>/scores.csv); overlays go to heatmaps/ beside it")
    p.add_argument("--false-alarm-rate", type=float, default=None, help="decide at this rate instead of the fitted one")
    p.add_argument("--heatmaps", action="store_true", help="write an overlay per image and a contact sheet of the most anomalous")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, …")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default 16)")
    p.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images (counted) instead of stopping at the first")
    p.add_argument("-c", "--config", default=None, help="optional YAML config (conf/score/default.yaml holds the defaults)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. backbone.path=CKPT batch_size=16")
    p.set_defaults(func=_cmd_score)
    p = sub.add_parser(
        "test", help="test on labelled data (MVTec AD layout or folders): image and pixel metrics per category", parents=[common],
        description="For each category: fit on its normal training images (split into fit and calibration parts as `zsad fit`), "
        "score its test images, and report image AUROC/AUPR/F1-max, the false-alarm and detection rates at the conformal threshold "
        "(Clopper–Pearson intervals), and pixel AUROC/AUPR/AUPRO where there are masks; the same for two simple baselines "
        "(pixel_gaussian, nearest_ssim). Writes results.{md,csv,json}, overlays of the best hits and worst misses, and a W&B run.",
        epilog="example: zsad test --data mvtec:data/mvtec_anomaly_detection/bottle --backbone diffpath-celeba32 -o outputs/test/bottle",
    )
    p.add_argument("--data", required=True,
                   help="mvtec:ROOT[/CATEGORY], visa:ROOT[/CATEGORY] (VisA with its split_csv/) or folder:NORMAL_DIR,ABNORMAL_DIR[,MASK_DIR]")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--backbone", default=None, help="the base model to fit with (a file, hf://… or a known name)")
    p.add_argument("--detector", default=None, help="test a detector folder already fitted by `zsad fit` instead of fitting")
    p.add_argument("--scorers", default=None, help="comma-separated scorers (default: diffpath_fused)")
    p.add_argument("--false-alarm-rate", type=float, default=None, help="α of the conformal threshold (default 0.05, or the --detector's own)")
    p.add_argument("--shots", type=int, default=None, help="fit on N normal images per category (calibration unchanged)")
    p.add_argument("--working-size", type=int, default=None, help="default: the category's median longer side, at most 256 (see zsad fit)")
    p.add_argument("--tile-stride", type=int, default=None, help="default: half a tile")
    p.add_argument("--preset", choices=["default", "fast"], default=None, help="fast: tiles every tile and 2 trajectory steps "
                   "(docs/speed.md); explicit --tile-stride and --steps win")
    p.add_argument("--steps", type=int, default=None, help="the scorers' trajectory steps (default: the preset's; see zsad fit)")
    p.add_argument("--map-combination", choices=["tile", "tile+pixel", "pixel"], default=None)
    p.add_argument("--aggregation", choices=["max", "top_k"], default=None, help="image score (default max)")
    _add_detector_kind_option(p)
    _add_blend_option(p)
    p.add_argument("--metric-size", type=int, default=None, help="compute pixel metrics at this size instead of the masks' resolution")
    p.add_argument("--no-baselines", action="store_true", help="skip the pixel_gaussian and nearest_ssim rows")
    p.add_argument("--pixel-store", action="store_true", help="also write each test image's pixel histograms (pixel_store/) for paired "
                   "bootstrap intervals between two runs: python experiments/paired_ad.py OUT_A OUT_B")
    _add_run_options(p)
    p.add_argument("--logger", choices=["wandb", "csv", "none"], default="wandb", help="where the table and overlays are logged (W&B offline by default)")
    p.set_defaults(func=_cmd_test, overrides=[])
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
    from zsad.utils.signals import EXIT_CODE, sigterm_ends_run

    with sigterm_ends_run() as sigterm:
        try:
            return args.func(args)
        except BaseException as err:
            if sigterm.received:  # whatever the stop raised on its way out (a DataLoader worker's death included)
                if os.environ.get("ZSAD_DEBUG"):
                    import traceback

                    traceback.print_exception(err)
                print(_stopped_by_sigterm(args), file=sys.stderr)
                return EXIT_CODE
            if not isinstance(err, ZsadError) or os.environ.get("ZSAD_DEBUG"):
                raise
            print(f"zsad {args.command}: error: {err}", file=sys.stderr)
            return 2


def _default_cache_dir() -> str:
    from zsad.detection.settings import DetectorSettings

    return str(DetectorSettings.cache_dir)


def _stopped_by_sigterm(args) -> str:
    """The one line after a SIGTERM: what the stopped command kept and what to rerun."""
    kept = {
        "train": "checkpoints written so far are kept (last.ckpt = the latest periodic one); the same command resumes from it (resume=auto)",
        "fit": f"no complete detector was written to {getattr(args, 'out', '')}; the features extracted so far are kept in the feature cache "
               f"({getattr(args, 'cache_dir', None) or _default_cache_dir()}) and the same command (with --force if that folder exists now) "
               "continues from them",
        "evaluate": "the results table was not completed; the features extracted so far are kept in the feature cache and the same command reuses them",
        "ablate": "the ablation table was not completed; the features extracted so far are kept in the feature cache and the same command reuses them",
        "test": "the results table was not completed; the features extracted so far are kept in the feature cache and the same command reuses them",
        "score": "the scores CSV holds only the images scored before the stop; run the same command again for all of them",
    }.get(args.command, "its outputs are incomplete; run the same command again")
    return f"zsad {args.command}: stopped by SIGTERM; {kept}."


if __name__ == "__main__":
    sys.exit(main())
