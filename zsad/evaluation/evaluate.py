"""`zsad evaluate`: a short sequence of named stages, each testable alone:

    prepare → extract (once per dataset split; derived scorers from their sources) → fit detectors
    → score pairs → report (tables, plots, W&B).

Everything a user can get wrong is checked in `prepare` before anything is created."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from zsad.config import save_config, to_plain
from zsad.config.checks import check_accelerator, check_output_dir, check_positive
from zsad.config.schema import DataConfig
from zsad.data import build_dataset
from zsad.data.base import ImageDataset
from zsad.data.transforms import PREPROCESSING_VERSION
from zsad.diffusion.backbone import Backbone
from zsad.diffusion.loading import load_backbone_from
from zsad.errors import ConfigError, DataLeakageError
from zsad.evaluation.metrics import bootstrap_auroc_ci, ood_metrics, roc_curve
from zsad.evaluation.report import COLUMNS, mean_rows, plot_auroc_heatmap, plot_histograms, plot_roc, write_results
from zsad.scoring.detector import describe_detector, make_detector
from zsad.scoring.extraction import configure_precision, device_for, extract_features, run_nonce
from zsad.scoring.feature_cache import FeatureCache, FeatureSet
from zsad.scoring.recipe import FeatureRecipe, recipe_for
from zsad.scoring.scorers import RECOMMENDED_SCORER, Scorer, build_scorer, padding_share
from zsad.utils.console import say, warn
from zsad.utils.dist import env_global_rank
from zsad.utils.loggers import build_logger, close_loggers, log_results, wandb_run_info
from zsad.utils.progress import progress_bar


def validate(cfg: DictConfig) -> None:
    """Check the pairs before any expensive work; errors name the offending alias."""
    if OmegaConf.is_missing(cfg.backbone, "path"):
        raise ConfigError("backbone.path is not set: pass backbone.path=path/to/checkpoint.")
    if not cfg.id or not cfg.ood:
        raise ConfigError("Set at least one `id` and one `ood` dataset alias.")
    for alias in [*cfg.id, *cfg.ood]:
        if alias not in cfg.datasets:
            raise ConfigError(f"Dataset alias '{alias}' is used in id/ood but not defined under `datasets` (defined: {', '.join(cfg.datasets)}).")
    for pair in cfg.far_pairs:
        if len(pair) != 2 or pair[0] not in cfg.id or pair[1] not in cfg.ood:
            raise ConfigError(f"far_pairs entry {list(pair)} must be [id_alias, ood_alias] from `id` and `ood`.")
    check_positive(cfg, ["batch_size", "max_fit_images", "max_eval_images", "network_batch", "image_size", "trainer.num_nodes",
                         "detector.gmm.n_components", "detector.gmm.cv_folds", "detector.gmm.max_iter", "detector.kde.bandwidth"],
                   allow_zero=["bootstrap", "num_workers"])
    check_accelerator(cfg.trainer.accelerator)
    precision = str(cfg.trainer.precision)
    if precision not in ("32-true", "bf16-mixed", "16-mixed"):
        raise ConfigError(f"trainer.precision={precision} is not one of 32-true, bf16-mixed, 16-mixed.")
    if precision == "16-mixed" and device_for(cfg.trainer.accelerator) != "cuda":
        raise ConfigError("trainer.precision=16-mixed needs a CUDA GPU; on the CPU use 32-true or bf16-mixed.")
    if cfg.trainer.compile not in (None, "default", "reduce-overhead", "max-autotune"):
        raise ConfigError(f"trainer.compile={cfg.trainer.compile} is not one of null, default, reduce-overhead, max-autotune.")
    check_output_dir(cfg.output_dir)
    check_output_dir(cfg.cache_dir, "cache_dir")
    if str(cfg.fit_split) == str(cfg.eval_split):
        raise ConfigError(
            f"fit_split and eval_split are both '{cfg.fit_split}': the detector would be fitted on the images it is "
            "tested on. Use disjoint splits (e.g. fit_split=train eval_split=test; a flat image folder is split by file name)."
        )


def check_network_padding(scorers: list[Scorer], batch_size: int, device: str, limit: float = 0.10) -> None:
    """Refuse a network call size that pads every full loader batch by more than `limit` (wasted compute)."""
    for scorer in scorers:
        rows, call = scorer.rows_per_call(batch_size), scorer.network_batch_for(device)
        share = padding_share(rows, call)
        if share > limit:
            divisor = max(d for d in range(1, min(call, rows) + 1) if rows % d == 0)
            raise ConfigError(
                f"network_batch={call} pads {share:.0%} of {scorer.name}'s network calls with zero images: it passes "
                f"{rows} rows per loader batch of {batch_size}. Set network_batch={divisor} (divides {rows}) or a "
                f"batch_size that makes the rows a multiple of {call}."
            )


def dataset_for(cfg: DictConfig, alias: str, split: str, image_size: int) -> ImageDataset:
    data = OmegaConf.merge(OmegaConf.structured(DataConfig), cfg.datasets[alias])
    data.split = split
    data.image_size = image_size
    limit = cfg.max_fit_images if split == cfg.fit_split else cfg.max_eval_images
    if limit is not None:
        data.max_images = min(int(limit), int(data.max_images)) if data.max_images else int(limit)
    data.num_workers = int(cfg.num_workers)
    return build_dataset(data)


def build_scorers(cfg: DictConfig) -> list[Scorer]:
    scorers = []
    for spec in cfg.scorers:
        options = dict(spec.options or {})
        if cfg.network_batch:
            options["network_batch"] = int(cfg.network_batch)
        scorers.append(build_scorer(str(spec.name or RECOMMENDED_SCORER), **options))
    names = [s.name for s in scorers]
    if len(set(names)) != len(names):
        raise ConfigError(f"Each scorer may appear once in `scorers` (got {names}).")
    return scorers


def checked_scorers(cfg: DictConfig) -> list[Scorer]:
    """The checks that come before any work (`validate`, each scorer's options and its sources', network
    padding); returns the scorers. `zsad ablate` runs it for every setting before the first one starts."""
    validate(cfg)
    scorers = build_scorers(cfg)
    check_network_padding([*scorers, *(src for s in scorers for src in s.sources())], int(cfg.batch_size), device_for(cfg.trainer.accelerator))
    return scorers


@dataclass
class Run:
    """What the stages share: the config, the loaded pieces and the running record of the run."""

    cfg: DictConfig
    out: Path
    scorers: list[Scorer]
    backbone: Backbone
    image_size: int
    datasets: dict[tuple[str, str], ImageDataset]
    loggers: list = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    fitted: dict = field(default_factory=dict)  # (scorer name, ID alias) → detector
    duplicates: dict = field(default_factory=dict)  # ID alias → exact fit/test duplicates
    extractions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("computed", "computed_images", "cached", "cached_images", "derived", "network_evaluations"), 0))

    def recipe(self, scorer: Scorer, dataset: ImageDataset) -> FeatureRecipe:
        t = self.cfg.trainer
        preprocessing = {**dataset.spec, "version": PREPROCESSING_VERSION}  # the cache key changes with the preprocessing code
        return recipe_for(scorer, self.backbone, preprocessing, int(self.cfg.seed), device_for(t.accelerator), str(t.precision),
                          bool(t.allow_tf32), bool(t.fast_path), t.compile)


def prepare(cfg: DictConfig) -> Run:
    """Checks, backbone, datasets (each split listed once per run), output folder and loggers."""
    t0 = time.time()
    scorers = checked_scorers(cfg)
    run_nonce()  # fixed before Lightning starts other processes, which inherit it
    backbone = load_backbone_from(cfg.backbone, fast_path=bool(cfg.trainer.fast_path))
    if cfg.trainer.compile:
        backbone.unet = torch.compile(backbone.unet, mode=None if cfg.trainer.compile == "default" else str(cfg.trainer.compile), dynamic=False)
    image_size = int(cfg.image_size or backbone.image_size)
    needed = [(a, cfg.fit_split) for a in cfg.id] + [(a, cfg.eval_split) for a in dict.fromkeys([*cfg.id, *cfg.ood])]
    datasets = {key: dataset_for(cfg, *key, image_size) for key in needed}
    for (alias, _), ds in datasets.items():
        for note in ds.notes:
            say(f"[data] {alias}: {note}")
    run = Run(cfg, Path(cfg.output_dir), scorers, backbone, image_size, datasets)
    if env_global_rank() == 0:
        save_config(cfg, run.out / "config.yaml")
        run.loggers = build_logger(cfg.logger, run.out, to_plain(cfg), job_type="eval")
    run.stages["setup"] = time.time() - t0
    return run


def _feature_id(scorer: Scorer) -> str:
    """Scorers with equal options make equal features: one extraction serves them (a run scorer and a source)."""
    return json.dumps(scorer.options(), sort_keys=True, default=str)


def extract(run: Run) -> dict[tuple[str, str, str], FeatureSet] | None:
    """Features of every (scorer, dataset split) keyed by (scorer name, alias, split); a derived scorer's
    from its sources' (extracted, or read from the cache, as scorers of their own). None off rank 0."""
    cfg, t = run.cfg, time.time()
    configure_precision(bool(cfg.trainer.allow_tf32))
    cache = FeatureCache(cfg.cache_dir)
    trainer_kwargs = dict(accelerator=str(cfg.trainer.accelerator), devices=cfg.trainer.devices, num_nodes=int(cfg.trainer.num_nodes),
                          strategy=str(cfg.trainer.strategy), precision=str(cfg.trainer.precision), default_root_dir=str(run.out))
    by_id: dict[tuple[str, str, str], FeatureSet | None] = {}

    def features_of(scorer: Scorer, key: tuple[str, str]) -> FeatureSet | None:
        fid = (_feature_id(scorer), *key)
        if fid not in by_id:
            if scorer.sources():
                parts = [features_of(source, key) for source in scorer.sources()]
                by_id[fid] = None if parts[0] is None else FeatureSet(scorer.derive([p.features for p in parts]), parts[0].indices, parts[0].seeds,
                                                                      {"derived_from": [s.name for s in scorer.sources()]}, all(p.from_cache for p in parts))
                run.extractions["derived"] += 1
            else:
                by_id[fid] = fs = extract_features(run.backbone, scorer, run.datasets[key], cache, run.recipe(scorer, run.datasets[key]),
                                                   trainer_kwargs, int(cfg.batch_size), int(cfg.num_workers))
                if fs is not None:
                    kind = "cached" if fs.from_cache else "computed"
                    run.extractions[kind] += 1
                    run.extractions[f"{kind}_images"] += len(fs.indices)
                    if not fs.from_cache:
                        run.extractions["network_evaluations"] += len(fs.indices) * scorer.network_evaluations_per_image(run.backbone.num_timesteps)
        return by_id[fid]

    features = {(s.name, *key): features_of(s, key) for s in run.scorers for key in run.datasets}
    if env_global_rank() != 0:
        return None
    run.stages["extraction"] = time.time() - t
    return features  # type: ignore[return-value]


def fit_detectors(run: Run, features: dict) -> dict[tuple[str, str], Any]:
    """One detector per (scorer, ID set), saved under detectors/<scorer>/<id> with its feature recipe."""
    cfg, t = run.cfg, time.time()
    say(f"[detect] fitting {len(run.scorers) * len(cfg.id)} detector(s): {', '.join(f'{s.name} ({s.detector})' for s in run.scorers)} "
        f"× ID sets {', '.join(cfg.id)}")
    fitted = {}
    for scorer in run.scorers:
        for alias in cfg.id:
            detector = make_detector(scorer.detector, cfg.detector).fit(features[(scorer.name, alias, cfg.fit_split)].features)
            prefix = run.out / "detectors" / scorer.name / alias
            detector.save(prefix)
            recipe = run.recipe(scorer, run.datasets[(alias, cfg.fit_split)])
            replace(recipe, extra={"id_dataset": to_plain(cfg.datasets[alias])}).write(prefix.with_suffix(".recipe.json"))
            fitted[(scorer.name, alias)] = detector
    run.stages["detectors"] = time.time() - t
    return fitted


def score_pairs(run: Run, features: dict, fitted: dict) -> tuple[list[dict], dict]:
    """Metrics of every (scorer, ID, OOD) pair, the per-image scores under scores/, and the ROC curves."""
    cfg, t = run.cfg, time.time()
    far = {tuple(p) for p in cfg.far_pairs}
    pairs = [(s, i, o) for s in run.scorers for i in cfg.id for o in cfg.ood if o != i]
    say(f"[metrics] {len(pairs)} pairs" + (f", bootstrap interval from {cfg.bootstrap} resamples each" if cfg.bootstrap else ""))
    rows, curves = [], {}
    with progress_bar(len(pairs) * int(cfg.bootstrap or 0), "bootstrap", unit="resample") as bar:
        for scorer, id_alias, ood_alias in pairs:
            detector = fitted[(scorer.name, id_alias)]
            id_fs, ood_fs = features[(scorer.name, id_alias, cfg.eval_split)], features[(scorer.name, ood_alias, cfg.eval_split)]
            id_scores, scores = detector.score(id_fs.features), detector.score(ood_fs.features)
            m = ood_metrics(id_scores, scores)
            lo, hi = bootstrap_auroc_ci(id_scores, scores, n_boot=int(cfg.bootstrap), seed=int(cfg.seed),
                                        progress=bar.update) if cfg.bootstrap else (None, None)
            pub = published_auroc(scorer, run.backbone, cfg.datasets[id_alias].name, cfg.datasets[ood_alias].name)
            rows.append({
                "scorer": scorer.name, "id": id_alias, "ood": ood_alias,
                "shift": "far" if (id_alias, ood_alias) in far else ("near" if far else ""),
                **m, "auroc_ci_low": lo, "auroc_ci_high": hi, "n_id": len(id_scores), "n_ood": len(scores),
                "published_auroc": pub, "delta_auroc": None if pub is None else m["auroc"] - pub,
            })
            score_file = run.out / "scores" / scorer.name / f"{id_alias}_vs_{ood_alias}.npz"  # every number traceable
            score_file.parent.mkdir(parents=True, exist_ok=True)
            np.savez(score_file, id_scores=id_scores, id_indices=id_fs.indices, ood_scores=scores, ood_indices=ood_fs.indices)
            entry = curves.setdefault((scorer.name, id_alias), ({}, id_scores, {}))
            entry[0][ood_alias] = (*roc_curve(id_scores, scores), m["auroc"])
            entry[2][ood_alias] = scores
    run.stages["metrics"] = time.time() - t
    return rows, curves


def published_auroc(scorer: Scorer, backbone: Backbone, id_name: str, ood_name: str) -> float | None:
    """The scorer's published AUROC of this pair, when our base model was trained on the same data as theirs."""
    if not scorer.published_auroc or backbone.trained_on != scorer.published_trained_on:
        return None
    return scorer.published_auroc.get((id_name, ood_name))


def report(run: Run, rows: list[dict], curves: dict, features: dict) -> dict[str, Any]:
    """results.{csv,md,json}, plots, the W&B log and the closing summary."""
    cfg, t = run.cfg, time.time()
    means = mean_rows(rows)
    plots = _plots(run, rows, curves) if cfg.plots else []
    run.stages["plots"] = time.time() - t
    run.stages["total"] = sum(run.stages.values())
    timing = {"extract_s": run.stages["extraction"], "total_s": run.stages["total"], "extractions_run": run.extractions["computed"]}
    sources = {s.name: s.published_source for s in run.scorers if s.published_source}
    extra = {"timing": timing, "stages_s": run.stages, "extractions": run.extractions, "backbone": run.backbone.identity,
             "image_size": run.image_size, "fit_test_duplicates": run.duplicates, "published_sources": sources}
    md = write_results(run.out, rows, means, extra, title=f"zsad evaluate: {run.out.name}", published_sources=sources)
    scalars = {f"ood/{r['scorer']}/{r['id']}/{r['ood']}/{m}": r[m] for r in rows for m in ("auroc", "fpr95", "aupr_in", "aupr_out")}
    scalars.update({f"ood/{r['scorer']}/mean/{r['ood']}/auroc": r["auroc"] for r in means})
    log_results(run.loggers, scalars, tables={"ood/results": (COLUMNS, [[r.get(c) for c in COLUMNS] for r in rows])},
                images={f"plots/{p.stem}": p for p in plots})
    detectors = {f"{name}/{alias}": describe_detector(d) for (name, alias), d in run.fitted.items()}
    summary = {
        "stages_s": run.stages, "extractions": run.extractions, "cache_dir": str(cfg.cache_dir), "detectors": detectors,
        "outputs": {"table": str(run.out / "results.md"), "plots": str(run.out / "plots"), "scores": str(run.out / "scores"),
                    "detectors": str(run.out / "detectors")},
        "wandb": wandb_run_info(run.loggers),
    }
    costs = {s.name: s.network_evaluations_per_image(run.backbone.num_timesteps) for s in run.scorers}
    forward_equivalents = {s.name: s.forward_equivalents_per_image(run.backbone.num_timesteps) for s in run.scorers}
    return {"rows": rows, "means": means, "table_markdown": md, "output_dir": str(run.out), "plots": [str(p) for p in plots], "timing": timing,
            "summary": summary, "evaluations_per_image": costs, "forward_equivalents_per_image": forward_equivalents}


def _plots(run: Run, rows: list[dict], curves: dict) -> list[Path]:
    plots = []
    for (scorer_name, id_alias), (roc, id_scores, ood_scores) in curves.items():
        plots.append(plot_roc(run.out / "plots" / f"roc_{scorer_name}_{id_alias}.png", scorer_name, id_alias, roc))
        plots.append(plot_histograms(run.out / "plots" / f"hist_{scorer_name}_{id_alias}.png", scorer_name, id_alias, id_scores, ood_scores))
    for scorer in run.scorers:
        mine = [r for r in rows if r["scorer"] == scorer.name]
        plots.append(plot_auroc_heatmap(run.out / "plots" / f"auroc_{scorer.name}.png", scorer.name, mine, list(run.cfg.id), list(run.cfg.ood)))
    return plots


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the benchmark; returns rows, means, output paths and a summary (on rank 0; {} elsewhere).

    A failed check leaves no folder, W&B run or file behind; the loggers are always closed."""
    run = prepare(cfg)
    failed = True
    try:
        features = extract(run)
        if features is None:  # not rank 0: extraction was this process's share
            failed = False
            return {}
        run.duplicates = {alias: check_duplicates(alias, run.datasets[(alias, cfg.fit_split)], features[(run.scorers[0].name, alias, cfg.fit_split)],
                                                  run.datasets[(alias, cfg.eval_split)], features[(run.scorers[0].name, alias, cfg.eval_split)])
                          for alias in cfg.id}
        run.fitted = fit_detectors(run, features)
        rows, curves = score_pairs(run, features, run.fitted)
        result = report(run, rows, curves, features)
        failed = False
        return result
    finally:
        close_loggers(run.loggers, failed=failed)


def check_duplicates(alias: str, fit_ds: ImageDataset, fit: FeatureSet, test_ds: ImageDataset, test: FeatureSet, max_share: float = 0.01) -> dict:
    """Exact duplicates between ID-fit and ID-test (equal pixel-hash seeds): a count and a few names;
    more than `max_share` of the test images is an error (the AUROC would be inflated)."""
    fit_by_seed = dict(zip(fit.seeds.tolist(), fit.indices.tolist()))
    pairs = [(int(i), fit_by_seed[s]) for i, s in zip(test.indices.tolist(), test.seeds.tolist()) if s in fit_by_seed]
    if not pairs:
        return {"count": 0, "examples": []}
    examples = [f"{test_ds.source.describe(i)} = {fit_ds.source.describe(j)}" for i, j in pairs[:3]]
    share = len(pairs) / len(test.indices)
    message = (f"{alias}: {len(pairs)} of {len(test.indices)} ID-test images ({share:.1%}) are exact duplicates of ID-fit "
               f"images, e.g. {'; '.join(examples)}")
    if share > max_share:
        raise DataLeakageError(f"{message}. Remove the duplicates from one split (more than {max_share:.0%} would inflate every AUROC of this ID set).")
    warn(message)
    return {"count": len(pairs), "examples": examples}
