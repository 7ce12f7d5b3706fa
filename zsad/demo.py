"""`zsad demo` / `make demo`: train a small base model and run the zero-shot benchmark on built-in data,
offline, on a CPU, in minutes. The same code paths as the real benchmark, only smaller."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Optional, Sequence

from zsad.config import load_config
from zsad.config.schema import EvalConfig, TrainConfig
from zsad.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
TRAIN_CONFIG, EVAL_CONFIG = CONF / "train" / "demo.yaml", CONF / "eval" / "demo.yaml"

# --quick: the same pipeline with fewer training images and evaluation images (about 2 minutes).
QUICK = {
    "train": ["total_images=9600"],
    "eval": ["max_fit_images=120", "max_eval_images=60", "bootstrap=100"],
}


def _split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """`train.x=…` goes to the training config, `eval.x=…` to the evaluation config."""
    train, evaluate = [], []
    for item in overrides:
        head, _, rest = item.partition(".")
        if head == "train" and rest:
            train.append(rest)
        elif head == "eval" and rest:
            evaluate.append(rest)
        else:
            raise ConfigError(f"Demo override '{item}' must start with train. or eval. (e.g. train.total_images=20000).")
    return train, evaluate


def run_demo(output_dir: Optional[str] = None, quick: bool = False, seed: int = 0, overrides: Sequence[str] = ()) -> dict:
    """Train on `shapes`, evaluate every scorer on every ordered pair of the other sets; returns the results."""
    from zsad.evaluation.evaluate import evaluate
    from zsad.training.train import train

    out = Path(output_dir or ("outputs/demo_quick" if quick else "outputs/demo"))
    user_train, user_eval = _split_overrides(overrides)
    mode_train, mode_eval = (QUICK["train"], QUICK["eval"]) if quick else ([], [])
    common_train = [f"output_dir={out / 'train'}", f"seed={seed}", "resume=never", *mode_train, *user_train]
    common_eval = [f"output_dir={out}", f"seed={seed}", *mode_eval, *user_eval]
    train_cfg = load_config(TRAIN_CONFIG, common_train, TrainConfig)
    eval_cfg = load_config(EVAL_CONFIG, common_eval, EvalConfig)
    for stale in (out / "train", out / "feature_cache"):  # a demo always starts from scratch
        shutil.rmtree(stale, ignore_errors=True)

    t0 = time.time()
    print(f"[demo 1/2] training the base model on built-in 'shapes' ({train_cfg.total_images} images seen) → {out / 'train'}", flush=True)
    train(train_cfg)
    t_train = time.time() - t0
    print(f"[demo 2/2] zero-shot evaluation of {len(eval_cfg.scorers)} scorers on {len(eval_cfg.id) * (len(eval_cfg.ood) - 1)} ordered pairs", flush=True)
    result = evaluate(eval_cfg)
    samples = sorted((out / "train" / "samples").glob("*.png"))
    if samples:
        shutil.copy(samples[-1], out / "samples.png")
    wall = time.time() - t0
    from zsad.evaluation.summary import format_summary

    print(result["table_markdown"])
    print(format_summary(result["summary"], extra_stages={"training": t_train}))
    print(f"demo finished in {wall / 60:.1f} min (training {t_train:.0f} s). Outputs in {out}/:")
    print("  results.md / results.csv / results.json   the table above, with per-pair scores under scores/")
    print("  plots/                                    AUROC heat maps, ROC curves and score histograms")
    print("  samples.png                               samples of the base model (EMA weights), enlarged")
    print("  wandb/                                    the offline W&B runs (training and evaluation)")
    return {**result, "wall_s": wall, "train_s": t_train}
