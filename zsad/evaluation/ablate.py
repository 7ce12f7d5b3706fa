"""`zsad ablate`: one benchmark, many settings of one scorer (other scorers as extra rows) → one table
(a row per setting, a column per pair, mean near / far / all AUROC with a bootstrap interval of the mean), a plot, CSV/Markdown/JSON.

Each setting runs as a `zsad evaluate` into `<output_dir>/settings/<label>/` on one shared feature
cache, so a sweep costs one extraction per distinct setting and dataset, and a rerun extracts nothing."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from zsad.config import load_config
from zsad.config.schema import EvalConfig
from zsad.errors import ConfigError
from zsad.evaluation.evaluate import checked_scorers, evaluate
from zsad.evaluation.metrics import bootstrap_mean_auroc, paired_bootstrap_delta
from zsad.evaluation.report import plot_ablation, plot_cost, write_ablation
from zsad.scoring.scorers import PAPER_SCORER
from zsad.utils.console import say
from zsad.utils.loggers import build_logger, check_logger_kind, close_loggers, log_results, wandb_run_info

# How the intervals of a row were resampled, recorded in ablation.json (experiments/choose_lite.py reads it): every
# set's images redrawn once per resample, shared by the pairs that use the set. Tables without it resampled each
# pair on its own (too narrow).
RESAMPLING = "per_set"


def sweep_settings(cfg: DictConfig) -> list[tuple[str, str, dict]]:
    """(label, scorer, options) for every setting: the listed ones, then the grid's product (of `scorer`)."""
    plain = OmegaConf.to_container(cfg, resolve=True)  # nested lists (time_range) as plain data
    swept = str(plain["scorer"] or PAPER_SCORER)
    settings = [(str(s.get("label") or _label(s["options"])), str(s.get("scorer") or swept), dict(s["options"]))
                for s in (plain["settings"] or [])]
    grid = {k: list(v) for k, v in (plain["grid"] or {}).items()}
    for combo in itertools.product(*grid.values()) if grid else []:
        options = {**dict(plain["base_options"] or {}), **dict(zip(grid, combo))}
        settings.append((_label(dict(zip(grid, combo))), swept, options))
    if not settings:
        raise ConfigError("The sweep is empty: list `settings` (label + options) or a `grid` of option values.")
    labels = [label for label, _, _ in settings]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"Setting labels must be unique; got {labels}.")
    return settings


def _label(options: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items()) or "defaults"


def checked_runs(cfg: DictConfig) -> list[tuple[str, str, dict, DictConfig]]:
    """(label, scorer, options, evaluate config) of every setting, each checked before the first one runs."""
    out = Path(cfg.output_dir)
    base_overrides = [*cfg.overrides, f"cache_dir={cfg.cache_dir}", "logger=none", "plots=false", f"bootstrap={cfg.bootstrap}"]
    base = load_config(cfg.benchmark, base_overrides, EvalConfig)  # a broken benchmark config fails before anything runs
    if not OmegaConf.is_missing(base.backbone, "path"):  # resolved now: it may be relative to the benchmark's output_dir
        base_overrides.append(f"backbone.path={base.backbone.path}")
    check_logger_kind(cfg.logger)
    runs = []
    for label, scorer, options in sweep_settings(cfg):
        spec = json.dumps([{"name": scorer, "options": options}])
        run_cfg = load_config(cfg.benchmark, [*base_overrides, f"scorers={spec}", f"output_dir={out / 'settings' / _safe(label)}"], EvalConfig)
        checked_scorers(run_cfg)
        runs.append((label, scorer, options, run_cfg))
    if cfg.reference and cfg.reference not in [r[0] for r in runs]:
        raise ConfigError(f"reference '{cfg.reference}' is not the label of a setting; labels: {', '.join(r[0] for r in runs)}.")
    return runs


def ablation_row(cfg: DictConfig, label: str, scorer: str, options: dict, result: dict) -> dict[str, Any]:
    """One table row: per-pair AUROC, mean near / far / all with a bootstrap interval, the cost per image."""
    row: dict[str, Any] = {"setting": label, "scorer": scorer, "options": options, "group": _group(cfg, label),
                           "evaluations_per_image": result["evaluations_per_image"][scorer],
                           "forward_equivalents_per_image": result.get("forward_equivalents_per_image", result["evaluations_per_image"])[scorer]}
    for r in result["rows"]:
        row[f"{r['id']}→{r['ood']}"] = r["auroc"]
    for m in result["means"]:
        row[f"mean_{m['ood']}"] = m["auroc"]
    scores = {(r["id"], r["ood"]): _scores(Path(result["output_dir"]) / "scores" / scorer / f"{r['id']}_vs_{r['ood']}.npz") for r in result["rows"]}
    check_shared_sets(scores)
    groups = {group: [(r["id"], r["ood"]) for r in result["rows"] if group == "all" or r["shift"] == group] for group in ("near", "far", "all")}
    # The pairs share their sets' images (A's test images are ID in (A, B) and OOD in (C, A)): `_sets` names each
    # pair's two sets, so a bootstrap resample redraws every set once for all the pairs that use it.
    row["_scores"] = {group: [scores[p][:2] for p in pairs] for group, pairs in groups.items()}
    row["_sets"] = groups
    row["resampling"] = RESAMPLING
    for group, pairs in row["_scores"].items():
        if pairs and cfg.bootstrap:
            row[f"mean_{group}_ci"] = bootstrap_mean_auroc(pairs, int(cfg.bootstrap), seed=int(cfg.seed), sets=groups[group])
    return row


def check_shared_sets(scores: dict[tuple[str, str], tuple[np.ndarray, ...]]) -> None:
    """Every set is the same images in the same order wherever it appears (as ID or as OOD), as the shared bootstrap
    draw assumes; `scores` maps (id, ood) to (id_scores, ood_scores, id_indices, ood_indices)."""
    seen: dict[str, np.ndarray] = {}
    for (id_set, ood_set), (_, _, id_indices, ood_indices) in scores.items():
        for name, indices in ((id_set, id_indices), (ood_set, ood_indices)):
            if name in seen and not np.array_equal(seen[name], indices):
                raise ValueError(f"set {name} holds other images (or another order) in pair ({id_set}, {ood_set}) than in an earlier pair")
            seen.setdefault(name, indices)


def add_deltas(cfg: DictConfig, rows: list[dict]) -> None:
    """Δ mean AUROC against the reference row (near shifts where marked, else all), paired bootstrap interval."""
    if not cfg.reference:
        return
    ref = next(r for r in rows if r["setting"] == cfg.reference)
    group = "near" if ref["_scores"]["near"] else "all"
    for r in rows:
        if r["_sets"][group] != ref["_sets"][group]:
            raise ValueError(f"setting {r['setting']} has pairs {r['_sets'][group]}, the reference {ref['_sets'][group]}")
        r["delta_group"] = group
        r["delta"] = paired_bootstrap_delta(r["_scores"][group], ref["_scores"][group], max(int(cfg.bootstrap), 1), seed=int(cfg.seed),
                                            sets=ref["_sets"][group])


def ablate(cfg: DictConfig) -> dict[str, Any]:
    """Run every setting of the sweep on the benchmark; write the table and the plots; return them."""
    out = Path(cfg.output_dir)
    runs = checked_runs(cfg)
    rows, extracted = [], 0
    for i, (label, scorer, options, run_cfg) in enumerate(runs, 1):
        say(f"[ablate {i}/{len(runs)}] {scorer} {label}")
        result = evaluate(run_cfg)
        extracted += result["timing"]["extractions_run"]
        rows.append(ablation_row(cfg, label, scorer, options, result))
    add_deltas(cfg, rows)
    for r in rows:
        r.pop("_scores")
        r.pop("_sets")
    pairs = [k for k in rows[0] if "→" in k]
    write_ablation(out, rows, pairs, cfg.reference)
    plots = [plot_ablation(out / "ablation.png", rows, pairs, Path(str(cfg.benchmark)).stem)]
    if any(r["group"] for r in rows):
        plots.append(plot_cost(out / "cost.png", rows, Path(str(cfg.benchmark)).stem, cfg.reference))
    wandb = log_ablation(cfg, out, rows, pairs, plots)
    say(f"[ablate] {len(runs)} settings, {extracted} extraction(s) computed; table {out / 'ablation.md'}")
    if wandb and wandb.get("sync"):
        say(f"[ablate] W&B run (offline): {wandb['sync']}")
    return {"rows": rows, "pairs": pairs, "extractions_run": extracted, "output_dir": str(out), "plot": str(plots[0]), "plots": [str(p) for p in plots],
            "table_markdown": (out / "ablation.md").read_text(), "wandb": wandb}


def _group(cfg: DictConfig, label: str) -> str | None:
    """The line of the cost plot a setting belongs to (its `group`), if the config gives one."""
    for s in cfg.settings or []:
        if (s.get("label") or "") == label:
            return s.get("group")
    return None


def log_ablation(cfg: DictConfig, out: Path, rows: list[dict], pairs: list[str], plots: list[Path]) -> dict | None:
    """One run (job_type `ablate`) holding the table, the plot and each setting's mean AUROCs."""
    loggers = build_logger(cfg.logger, out, OmegaConf.to_container(cfg, resolve=True), job_type="ablate")
    failed = True
    try:
        groups = [g for g in ("near", "far", "all") if f"mean_{g}" in rows[0]]
        scalars = {f"ablate/{key}/mean_{g}": r[f"mean_{g}"] for key, r in zip(metric_keys([r["setting"] for r in rows]), rows) for g in groups}
        columns = ["setting", "scorer", *pairs, *[f"mean_{g}" for g in groups]]
        log_results(loggers, scalars, tables={"ablate/table": (columns, [[r.get(c) for c in columns] for r in rows])},
                    images={"ablate/plot": plots[0], **({"ablate/cost": plots[1]} if len(plots) > 1 else {})})
        failed = False
        return wandb_run_info(loggers)
    finally:
        close_loggers(loggers, failed=failed)


def _scores(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    with np.load(path) as d:
        return d["id_scores"], d["ood_scores"], d["id_indices"], d["ood_indices"]


def metric_keys(labels: list[str]) -> list[str]:
    """W&B metric names from setting labels: only [A-Za-z0-9_.-] (what W&B can sort and filter), unique
    without regard to case (W&B's names are case-insensitive). The table keeps the labels as written."""
    keys: list[str] = []
    for label in labels:
        key = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "setting"
        base, n = key, 2
        while key.lower() in {k.lower() for k in keys}:
            key, n = f"{base}_{n}", n + 1
        keys.append(key)
    return keys


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=," else "_" for c in label)
