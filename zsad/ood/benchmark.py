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
from zsad.config.checks import check_accelerator, check_output_dir, check_positive
from zsad.config.schema import DataConfig
from zsad.data import build_dataset
from zsad.diffusion.loading import backbone_settings, load_backbone_from
from zsad.errors import ConfigError, DataLeakageError
from zsad.ood.detector import GMMDetector, KDEDetector
from zsad.ood.extraction import configure_precision, extract_features, run_nonce
from zsad.ood.feature_cache import FeatureCache, FeatureSet, runtime_identity
from zsad.ood.metrics import bootstrap_auroc_ci, ood_metrics, roc_curve
from zsad.ood.published import PUBLISHED_AUROC
from zsad.ood.report import COLUMNS, mean_rows, plot_auroc_heatmap, plot_histograms, plot_roc, write_results
from zsad.ood.scorers import Scorer, build_scorer, padding_share
from zsad.utils.console import say, warn
from zsad.utils.dist import env_global_rank
from zsad.utils.progress import progress_bar
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
    check_positive(cfg, ["batch_size", "max_fit_images", "max_eval_images", "network_batch", "image_size", "trainer.num_nodes",
                         "detector.gmm.n_components", "detector.gmm.cv_folds", "detector.gmm.max_iter", "detector.kde.bandwidth"],
                   allow_zero=["bootstrap", "num_workers"])
    check_accelerator(cfg.trainer.accelerator)
    precision = str(cfg.trainer.precision)
    if precision not in ("32-true", "bf16-mixed", "16-mixed"):
        raise ConfigError(f"trainer.precision={precision} is not one of 32-true, bf16-mixed, 16-mixed.")
    if precision == "16-mixed" and extraction_device(cfg) != "cuda":
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


def dataset_for(cfg: DictConfig, alias: str, split: str, image_size: int):
    data = OmegaConf.merge(OmegaConf.structured(DataConfig), cfg.datasets[alias])
    data.split = split
    data.image_size = image_size
    limit = cfg.max_fit_images if split == cfg.fit_split else cfg.max_eval_images
    if limit is not None:
        data.max_images = min(int(limit), int(data.max_images)) if data.max_images else int(limit)
    data.num_workers = int(cfg.num_workers)
    return build_dataset(data)


def extraction_device(cfg: DictConfig) -> str:
    """The device kind feature extraction will run on (for defaults and the cache key)."""
    accel = str(cfg.trainer.accelerator)
    if accel == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if accel == "gpu" else accel


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


def checked_scorers(cfg: DictConfig) -> list[Scorer]:
    """The checks that come before any work (`validate`, each scorer's options, network padding); returns
    the scorers. `zsad ablate` runs it for every setting before the first one starts."""
    validate(cfg)
    scorers = build_scorers(cfg)
    check_network_padding(scorers, int(cfg.batch_size), extraction_device(cfg))
    return scorers


def make_detector(cfg: DictConfig, scorer: Scorer):
    if scorer.detector == "kde":
        return KDEDetector(**OmegaConf.to_container(cfg.detector.kde))
    return GMMDetector(**OmegaConf.to_container(cfg.detector.gmm))


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the benchmark; returns rows, means, output paths and a summary (on rank 0; {} elsewhere).

    Everything a user can get wrong is checked first (config values, accelerator, checkpoint, datasets,
    output folder): a failed check leaves no folder, W&B run or file behind."""
    t0 = time.time()
    scorers = checked_scorers(cfg)
    run_nonce()  # fixed before Lightning starts other processes, which inherit it
    out = Path(cfg.output_dir)
    backbone = load_backbone_from(cfg.backbone, fast_path=bool(cfg.trainer.fast_path))
    if cfg.trainer.compile:
        backbone.unet = torch.compile(backbone.unet, mode=None if cfg.trainer.compile == "default" else str(cfg.trainer.compile), dynamic=False)
    image_size = int(cfg.image_size or backbone.image_size)
    rank0 = env_global_rank() == 0
    needed = [(a, cfg.fit_split) for a in cfg.id] + [(a, cfg.eval_split) for a in dict.fromkeys([*cfg.id, *cfg.ood])]
    datasets = {key: dataset_for(cfg, *key, image_size) for key in needed}  # each split listed once per run
    stages = {"setup": time.time() - t0}
    for (alias, _), ds in datasets.items():
        for note in ds.notes:
            say(f"[data] {alias}: {note}")
    loggers = []
    if rank0:
        save_config(cfg, out / "config.yaml")
        loggers = build_logger(cfg.logger, out, to_plain(cfg), job_type="eval")
    failed = True
    try:
        result = _run(cfg, out, scorers, backbone, image_size, datasets, loggers, stages)
        if result:
            result["summary"]["wandb"] = wandb_run_info(loggers)
        failed = False
        return result
    finally:
        close_loggers(loggers, failed=failed)


def wandb_run_info(loggers) -> dict | None:
    """Where the W&B run is and, when offline, the command that uploads it."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            run = logger.experiment
            folder = Path(run.dir).parent if getattr(run, "dir", None) else None
            offline = bool(getattr(run.settings, "_offline", False)) or (folder is not None and folder.name.startswith("offline-run"))
            return {"folder": str(folder) if folder else None, "offline": offline, "sync": f"wandb sync {folder}" if offline and folder else None,
                    "url": getattr(run, "url", None) if not offline else None}
    return None


def _run(cfg, out: Path, scorers: list[Scorer], backbone, image_size: int, datasets: dict, loggers, stages: dict) -> dict[str, Any]:
    configure_precision(bool(cfg.trainer.allow_tf32))
    cache = FeatureCache(cfg.cache_dir)
    identity = backbone.identity
    runtime = runtime_identity(extraction_device(cfg), str(cfg.trainer.precision), fast_path=getattr(backbone, "fast_path", None))
    runtime["compile"] = cfg.trainer.compile
    trainer_kwargs = dict(
        accelerator=str(cfg.trainer.accelerator),
        devices=cfg.trainer.devices,
        num_nodes=int(cfg.trainer.num_nodes),
        strategy=str(cfg.trainer.strategy),
        precision=str(cfg.trainer.precision),
        default_root_dir=str(out),
    )
    rank0 = env_global_rank() == 0
    t = time.time()
    features: dict[tuple[str, str, str], FeatureSet] = {}
    extractions = {"computed": 0, "computed_images": 0, "cached": 0, "cached_images": 0, "derived": 0, "network_evaluations": 0}
    sources = {s.name: next((o for o in scorers if s.derivable_from(o)), None) for s in scorers}
    for scorer in sorted(scorers, key=lambda s: sources[s.name] is not None):  # sources first
        source = sources[scorer.name]
        for alias, split in datasets:
            if source is not None and (source.name, alias, split) in features:
                # e.g. DiffPath-1D from DiffPath-6D's features: one inversion serves both
                fs6 = features[(source.name, alias, split)]
                features[(scorer.name, alias, split)] = FeatureSet(scorer.from_6d(fs6.features), fs6.indices, fs6.seeds, {**fs6.meta, "derived_from": source.name}, fs6.from_cache)
                extractions["derived"] += 1
                continue
            fs = extract_features(backbone, identity, scorer, datasets[(alias, split)], cache, int(cfg.seed), trainer_kwargs, int(cfg.batch_size), int(cfg.num_workers), runtime)
            if fs is not None:
                features[(scorer.name, alias, split)] = fs
                kind = "cached" if fs.from_cache else "computed"
                extractions[kind] += 1
                extractions[f"{kind}_images"] += len(fs.indices)
                if not fs.from_cache:
                    extractions["network_evaluations"] += len(fs.indices) * scorer.network_evaluations_per_image(backbone.num_timesteps)
    if not rank0:
        return {}
    stages["extraction"] = time.time() - t
    duplicates = {alias: check_duplicates(alias, datasets[(alias, cfg.fit_split)], features[(scorers[0].name, alias, cfg.fit_split)],
                                          datasets[(alias, cfg.eval_split)], features[(scorers[0].name, alias, cfg.eval_split)]) for alias in cfg.id}

    far = {tuple(p) for p in cfg.far_pairs}
    # Published DiffPathV2 numbers were measured with a CelebA base model: only comparable to ours then.
    published = PUBLISHED_AUROC if backbone.trained_on == "celeba" else {}
    say(f"[detect] fitting {len(scorers) * len(cfg.id)} detector(s): {', '.join(f'{s.name} ({s.detector})' for s in scorers)} × ID sets {', '.join(cfg.id)}")
    t = time.time()
    fitted, detectors = {}, {}
    for scorer in scorers:
        for id_alias in cfg.id:
            detector = make_detector(cfg, scorer).fit(features[(scorer.name, id_alias, cfg.fit_split)].features)
            det_path = out / "detectors" / scorer.name / id_alias
            detector.save(det_path)
            _annotate_detector(det_path, scorer, backbone, cfg, id_alias, datasets[(id_alias, cfg.eval_split)], image_size)
            fitted[(scorer.name, id_alias)] = detector
            detectors[f"{scorer.name}/{id_alias}"] = describe_detector(detector)
    stages["detectors"] = time.time() - t

    t = time.time()
    pairs = [(s, i, o) for s in scorers for i in cfg.id for o in cfg.ood if o != i]
    say(f"[metrics] {len(pairs)} pairs" + (f", bootstrap interval from {cfg.bootstrap} resamples each" if cfg.bootstrap else ""))
    rows, curves_by = [], {}
    with progress_bar(len(pairs) * int(cfg.bootstrap or 0), "bootstrap", unit="resample") as bar:
        for scorer in scorers:
            for id_alias in cfg.id:
                detector = fitted[(scorer.name, id_alias)]
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
                    lo, hi = bootstrap_auroc_ci(id_scores, scores, n_boot=int(cfg.bootstrap), seed=int(cfg.seed), progress=bar.update) if cfg.bootstrap else (None, None)
                    id_name, ood_name = cfg.datasets[id_alias].name, cfg.datasets[ood_alias].name
                    pub = published.get(scorer.name, {}).get((id_name, ood_name))
                    rows.append({
                        "scorer": scorer.name, "id": id_alias, "ood": ood_alias,
                        "shift": "far" if (id_alias, ood_alias) in far else ("near" if far else ""),
                        **m, "auroc_ci_low": lo, "auroc_ci_high": hi, "n_id": len(id_scores), "n_ood": len(scores),
                        "published_auroc": pub, "delta_auroc": None if pub is None else m["auroc"] - pub,
                    })
                    score_file = out / "scores" / scorer.name / f"{id_alias}_vs_{ood_alias}.npz"  # every number traceable
                    score_file.parent.mkdir(parents=True, exist_ok=True)
                    np.savez(score_file, id_scores=id_scores, id_indices=id_test.indices, ood_scores=scores, ood_indices=ood_fs.indices)
                    curves[ood_alias] = (*roc_curve(id_scores, scores), m["auroc"])
                curves_by[(scorer.name, id_alias)] = (curves, id_scores, ood_scores)
    means = mean_rows(rows)
    stages["metrics"] = time.time() - t

    t = time.time()
    plots = []
    if cfg.plots:
        for (scorer_name, id_alias), (curves, id_scores, ood_scores) in curves_by.items():
            if curves:
                plots.append(plot_roc(out / "plots" / f"roc_{scorer_name}_{id_alias}.png", scorer_name, id_alias, curves))
                plots.append(plot_histograms(out / "plots" / f"hist_{scorer_name}_{id_alias}.png", scorer_name, id_alias, id_scores, ood_scores))
        for scorer in scorers:
            plots.append(plot_auroc_heatmap(out / "plots" / f"auroc_{scorer.name}.png", scorer.name, [r for r in rows if r["scorer"] == scorer.name], list(cfg.id), list(cfg.ood)))
    stages["plots"] = time.time() - t
    stages["total"] = sum(stages.values())
    timing = {"extract_s": stages["extraction"], "total_s": stages["total"], "extractions_run": extractions["computed"]}
    extra = {"timing": timing, "stages_s": stages, "extractions": extractions, "detectors": detectors, "backbone": identity,
             "runtime": runtime, "image_size": image_size, "fit_test_duplicates": duplicates}
    md = write_results(out, rows, means, extra, title=f"zsad evaluate: {Path(cfg.output_dir).name}")
    _log(loggers, rows, means, plots)
    summary = {
        "stages_s": stages, "extractions": extractions, "cache_dir": str(cfg.cache_dir), "detectors": detectors,
        "outputs": {"table": str(out / "results.md"), "plots": str(out / "plots"), "scores": str(out / "scores"), "detectors": str(out / "detectors")},
    }
    return {"rows": rows, "means": means, "table_markdown": md, "output_dir": str(out), "plots": [str(p) for p in plots], "timing": timing, "summary": summary}


def describe_detector(detector) -> str:
    """The settings a detector was fitted with, in a few words (chosen by model selection when grid)."""
    if isinstance(detector, KDEDetector):
        return f"KDE, bandwidth {detector.bandwidth:g}"
    p = detector.best_params_
    how = "chosen by 10-fold CV" if detector.mode == "grid" else "fixed"
    return f"GMM {p['gmm__n_components']} components, {p['gmm__covariance_type']} covariance ({how})".replace("10-fold", f"{detector.cv_folds}-fold")


def check_duplicates(alias: str, fit_ds, fit: FeatureSet, test_ds, test: FeatureSet, max_share: float = 0.01) -> dict:
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


def _annotate_detector(path: Path, scorer: Scorer, backbone, cfg, id_alias: str, dataset, image_size: int) -> None:
    """Record in the detector's JSON everything that made its features, so `zsad score` reproduces them."""
    import json

    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    settings = backbone_settings(cfg.backbone)
    meta["features"] = {
        "scorer": scorer.options(),
        "scorer_version": scorer.version,
        "network_batch": scorer.network_batch_for(backbone.alphas_cumprod.device),
        "preprocessing": dataset.spec,  # image size, centre crop: what the ID images went through
        "image_size": image_size,
        "seed": int(cfg.seed),
        "backbone": {**backbone.identity, "path": str(Path(settings["path"]).resolve()), "config": settings["config"]},
        "id_dataset": to_plain(cfg.datasets[id_alias]),
        "allow_tf32": bool(cfg.trainer.allow_tf32),
        "precision": str(cfg.trainer.precision),
        "fast_path": bool(cfg.trainer.fast_path),
    }
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
            columns = COLUMNS
            table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
            payload: dict[str, Any] = {"ood/results": table, **scalars}
            payload.update({f"plots/{p.stem}": wandb.Image(str(p)) for p in plots})
            run.log(payload)
            for k, v in scalars.items():
                run.summary[k] = v
        else:
            logger.log_metrics(scalars, step=0)
            logger.save()
