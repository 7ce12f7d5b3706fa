"""`zsad evaluate`: extract features once per dataset split, fit one detector per ID set, score every
(ID, OOD) pair, write tables and plots, log the same to W&B."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from zsad.config import save_config, to_plain
from zsad.config.schema import DataConfig
from zsad.data import build_dataset
from zsad.diffusion.loading import backbone_settings, load_backbone_from
from zsad.errors import ConfigError
from zsad.ood.detector import GMMDetector, KDEDetector
from zsad.ood.extraction import FeatureCache, FeatureSet, configure_precision, extract_features, run_nonce
from zsad.ood.metrics import bootstrap_auroc_ci, ood_metrics, roc_curve
from zsad.ood.published import PUBLISHED_AUROC
from zsad.ood.report import mean_rows, plot_histograms, plot_roc, write_results
from zsad.ood.scorers import Scorer, build_scorer
from zsad.utils.dist import env_global_rank
from zsad.utils.loggers import build_logger, close_loggers


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


def backbone_identity(cfg: DictConfig, backbone) -> dict:
    """What the features depend on: the weights' content hash and how they were loaded."""
    settings = backbone_settings(cfg.backbone)
    return {"sha256": backbone.fingerprint, "format": settings["format"], "config": settings["config"], "use_ema": bool(settings["use_ema"])}


def dataset_for(cfg: DictConfig, alias: str, split: str, image_size: int):
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
        scorers.append(build_scorer(str(spec.name), **options))
    names = [s.name for s in scorers]
    if len(set(names)) != len(names):
        raise ConfigError(f"Each scorer may appear once in `scorers` (got {names}).")
    return scorers


def make_detector(cfg: DictConfig, scorer: Scorer):
    if scorer.detector == "kde":
        return KDEDetector(**OmegaConf.to_container(cfg.detector.kde))
    return GMMDetector(**OmegaConf.to_container(cfg.detector.gmm))


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the benchmark; returns rows, means and output paths (on rank 0; {} elsewhere)."""
    validate(cfg)
    run_nonce()  # fixed before Lightning starts other processes, which inherit it
    out = Path(cfg.output_dir)
    scorers = build_scorers(cfg)
    backbone = load_backbone_from(cfg.backbone)
    image_size = int(cfg.image_size or backbone.image_size)
    rank0 = env_global_rank() == 0
    loggers = []
    if rank0:
        save_config(cfg, out / "config.yaml")
        loggers = build_logger(cfg.logger, out, to_plain(cfg), job_type="eval")
    failed = True
    try:
        result = _run(cfg, out, scorers, backbone, image_size, loggers)
        failed = False
        return result
    finally:
        close_loggers(loggers, failed=failed)


def _run(cfg, out: Path, scorers: list[Scorer], backbone, image_size: int, loggers) -> dict[str, Any]:
    t0 = time.time()
    configure_precision(bool(cfg.trainer.allow_tf32))
    cache = FeatureCache(cfg.cache_dir)
    identity = backbone_identity(cfg, backbone)
    trainer_kwargs = dict(
        accelerator=str(cfg.trainer.accelerator),
        devices=cfg.trainer.devices,
        num_nodes=int(cfg.trainer.num_nodes),
        strategy=str(cfg.trainer.strategy),
        precision="32-true",
        enable_progress_bar=bool(cfg.trainer.enable_progress_bar),
        enable_model_summary=False,
        default_root_dir=str(out),
    )
    needed = [(a, cfg.fit_split) for a in cfg.id] + [(a, cfg.eval_split) for a in dict.fromkeys([*cfg.id, *cfg.ood])]
    features: dict[tuple[str, str, str], FeatureSet] = {}
    extracted = 0
    for scorer in scorers:
        for alias, split in needed:
            dataset = dataset_for(cfg, alias, split, image_size)
            fs = extract_features(backbone, identity, scorer, dataset, cache, int(cfg.seed), trainer_kwargs, int(cfg.batch_size), int(cfg.num_workers))
            if fs is not None:
                features[(scorer.name, alias, split)] = fs
                extracted += 0 if fs.from_cache else 1
    if env_global_rank() != 0:
        return {}
    t_extract = time.time() - t0

    far = {tuple(p) for p in cfg.far_pairs}
    rows, curves_by = [], {}
    for scorer in scorers:
        for id_alias in cfg.id:
            detector = make_detector(cfg, scorer).fit(features[(scorer.name, id_alias, cfg.fit_split)].features)
            det_path = out / "detectors" / scorer.name / id_alias
            detector.save(det_path)
            _annotate_detector(det_path, scorer, identity, cfg, id_alias, image_size)
            id_test = features[(scorer.name, id_alias, cfg.eval_split)]
            id_scores = detector.score(id_test.features)
            ood_scores, curves = {}, {}
            for ood_alias in cfg.ood:
                if ood_alias == id_alias:
                    continue
                ood_fs = features[(scorer.name, ood_alias, cfg.eval_split)]
                scores = detector.score(ood_fs.features)
                ood_scores[ood_alias] = scores
                m = ood_metrics(id_scores, scores)
                lo, hi = bootstrap_auroc_ci(id_scores, scores, n_boot=int(cfg.bootstrap), seed=int(cfg.seed)) if cfg.bootstrap else (None, None)
                id_name, ood_name = cfg.datasets[id_alias].name, cfg.datasets[ood_alias].name
                rows.append({
                    "scorer": scorer.name, "id": id_alias, "ood": ood_alias,
                    "shift": "far" if (id_alias, ood_alias) in far else ("near" if far else ""),
                    **m, "auroc_ci_low": lo, "auroc_ci_high": hi, "n_id": len(id_scores), "n_ood": len(scores),
                    "published_auroc": PUBLISHED_AUROC.get(scorer.name, {}).get((id_name, ood_name)),
                })
                score_file = out / "scores" / scorer.name / f"{id_alias}_vs_{ood_alias}.npz"  # every number traceable
                score_file.parent.mkdir(parents=True, exist_ok=True)
                np.savez(score_file, id_scores=id_scores, id_indices=id_test.indices, ood_scores=scores, ood_indices=ood_fs.indices)
                curves[ood_alias] = (*roc_curve(id_scores, scores), m["auroc"])
            curves_by[(scorer.name, id_alias)] = (curves, id_scores, ood_scores)

    means = mean_rows(rows)
    plots = []
    if cfg.plots:
        for (scorer_name, id_alias), (curves, id_scores, ood_scores) in curves_by.items():
            if curves:
                plots.append(plot_roc(out / "plots" / f"roc_{scorer_name}_{id_alias}.png", scorer_name, id_alias, curves))
                plots.append(plot_histograms(out / "plots" / f"hist_{scorer_name}_{id_alias}.png", scorer_name, id_alias, id_scores, ood_scores))
    timing = {"extract_s": t_extract, "total_s": time.time() - t0, "extractions_run": extracted}
    md = write_results(out, rows, means, {"timing": timing, "backbone": identity, "image_size": image_size}, title=f"zsad evaluate: {Path(cfg.output_dir).name}")
    _log(loggers, rows, means, plots)
    return {"rows": rows, "means": means, "table_markdown": md, "output_dir": str(out), "plots": [str(p) for p in plots], "timing": timing}


def _annotate_detector(path: Path, scorer: Scorer, identity: dict, cfg, id_alias: str, image_size: int) -> None:
    """Record in the detector's JSON what produced its features, so `zsad score` can reproduce them."""
    import json

    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["features"] = {"scorer": scorer.options(), "backbone": identity, "id_dataset": to_plain(cfg.datasets[id_alias]), "image_size": image_size, "seed": int(cfg.seed)}
    meta_path.write_text(json.dumps(meta, indent=2, default=str))


def _log(loggers, rows: list[dict], means: list[dict], plots: list[Path]) -> None:
    scalars = {}
    for r in rows:
        for metric in ("auroc", "fpr95", "aupr_in", "aupr_out"):
            scalars[f"ood/{r['scorer']}/{r['id']}/{r['ood']}/{metric}"] = r[metric]
    for r in means:
        scalars[f"ood/{r['scorer']}/mean/{r['ood']}/auroc"] = r["auroc"]
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            run = logger.experiment
            columns = ["scorer", "id", "ood", "shift", "auroc", "auroc_ci_low", "auroc_ci_high", "fpr95", "aupr_in", "aupr_out", "n_id", "n_ood", "published_auroc"]
            table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
            payload: dict[str, Any] = {"ood/results": table, **scalars}
            payload.update({f"plots/{p.stem}": wandb.Image(str(p)) for p in plots})
            run.log(payload)
            for k, v in scalars.items():
                run.summary[k] = v
        else:
            logger.log_metrics(scalars, step=0)
            logger.save()
