"""`zsad score`: anomaly scores (and optional error heat maps) for a folder of images, computed exactly as
the benchmark that fitted the detector computed its features (same preprocessing, scorer, network call
size, seeds and weights), so an image gets the same score here as in `zsad evaluate`."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from zsad.data import folder_dataset
from zsad.diffusion.loading import load_backbone
from zsad.errors import ConfigError
from zsad.scoring.detector import load_detector
from zsad.scoring.extraction import configure_precision
from zsad.scoring.recipe import FeatureRecipe, RecipeMismatchError, recipe_for
from zsad.scoring.scorers import build_scorer, image_seeds
from zsad.utils.progress import progress_bar


def read_recipe(prefix: Path) -> FeatureRecipe:
    """The feature recipe `zsad evaluate` wrote beside a detector prefix (…/detectors/<scorer>/<id>)."""
    if not prefix.with_suffix(".json").is_file():
        raise ConfigError(f"detector {prefix}: no {prefix.name}.json there. Use a prefix written by `zsad evaluate`, e.g. outputs/eval/x/detectors/diffpath_v2/celeba.")
    recipe_path = prefix.with_suffix(".recipe.json")
    if not recipe_path.is_file():
        raise RecipeMismatchError(f"{prefix}: no feature recipe ({recipe_path.name}) beside the detector: it was fitted by an older zsad. Refit it with `zsad evaluate`.")
    return FeatureRecipe.read(recipe_path)


def autocast(device: torch.device, precision: str):
    """The network precision the benchmark extracted with (Lightning's `precision`), outside Lightning."""
    dtypes = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
    return torch.autocast(device.type, dtype=dtypes.get(precision, torch.float32), enabled=precision in dtypes)


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def default_output(images: Path) -> Path:
    """outputs/score/<folder name>/scores.csv: never inside the input folder."""
    return Path("outputs") / "score" / images.resolve().name / "scores.csv"


def score_images(cfg: DictConfig, log=print) -> Path:
    """Write a CSV (file, anomaly_score, features…) for every image under `cfg.images`; returns its path."""
    for key in ("images", "detector"):
        if OmegaConf.is_missing(cfg, key) or not cfg[key]:
            raise ConfigError(f"{key} is not set: zsad score DIR --detector PREFIX")
    images_dir, det_path = Path(cfg.images), Path(cfg.detector)
    recipe = read_recipe(det_path)
    out = Path(cfg.output) if cfg.output else default_output(images_dir)
    heat_dir = Path(cfg.heatmap_dir) if cfg.heatmap_dir else out.parent / "heatmaps"
    for label, target in (("output", out), ("heat-map folder", heat_dir)):
        if images_dir.is_dir() and _inside(target, images_dir):
            raise ConfigError(f"The {label} {target} is inside the input folder {images_dir}: a later run would read its files as inputs. Choose a path outside it.")
    scorer = build_scorer(recipe.scorer_name, **{k: v for k, v in recipe.scorer.items() if k != "name"}, network_batch=int(recipe.network_batch or 8))
    detector = load_detector(det_path)

    given = OmegaConf.to_container(cfg.backbone, resolve=True) if not OmegaConf.is_missing(cfg.backbone, "path") and cfg.backbone.path else {}
    weights = Path(given.get("path") or recipe.weights_path)
    configure_precision(recipe.tf32)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else ("cpu" if cfg.device == "auto" else cfg.device))
    backbone = load_backbone(weights, format=recipe.weights_format or "auto", config=recipe.model_config if recipe.weights_format == "improved-diffusion" else None,
                             use_ema=bool(recipe.use_ema if recipe.use_ema is not None else True), device=device, fast_path=recipe.fast_path)
    current = recipe_for(scorer, backbone, recipe.preprocessing, recipe.seed, device, recipe.precision, recipe.tf32, recipe.fast_path, recipe.compile)
    for message in recipe.check(current, "Pass backbone.path= the file the detector was fitted on, or refit the detector with this zsad (`zsad evaluate`)."):
        log(f"warning: {message}")
    if cfg.heatmaps and scorer.map_meaning is None:
        raise ConfigError(f"heat maps need a scorer with per-pixel maps; this detector was fitted on {scorer.name} features, which have none.")

    prep = recipe.preprocessing
    dataset = folder_dataset(images_dir, int(prep["image_size"]), prep.get("center_crop"))
    loader = DataLoader(dataset, batch_size=int(cfg.batch_size), num_workers=int(cfg.num_workers))
    rows, maps = [], []
    with progress_bar(len(dataset), f"scoring {images_dir}") as bar:
        for images, indices in loader:
            ids = image_seeds(recipe.seed, images)
            with autocast(device, recipe.precision):
                features, batch_maps = scorer(backbone, images, ids, with_maps=True)  # one network pass for both
            features = features.numpy()
            scores = detector.score(features)
            if cfg.heatmaps:
                maps += list(batch_maps.numpy())
            for i, s, f in zip(indices.tolist(), scores, features):
                rows.append([dataset.source.files[i].relative_to(images_dir).as_posix(), repr(float(s)), *map(repr, map(float, f))])
            bar.update(len(indices))

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "anomaly_score", *scorer.feature_names])
        writer.writerows(rows)
    if cfg.heatmaps:
        _write_heatmaps(heat_dir, [r[0] for r in rows], maps)
        log(f"heat maps written to {heat_dir}")
    return out


def _write_heatmaps(folder: Path, files: list[str], maps: list[np.ndarray], scale: Optional[float] = None) -> None:
    """One PNG per image, at the image's relative path: mean |weighted error| over steps and channels, on
    one colour scale for all."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import cm
    from PIL import Image

    vmax = scale or float(np.quantile(np.stack(maps), 0.99)) or 1.0
    for name, m in zip(files, maps):
        rgb = (cm.inferno(np.clip(m / vmax, 0, 1))[..., :3] * 255).astype(np.uint8)
        img = Image.fromarray(rgb).resize((m.shape[1] * 8, m.shape[0] * 8), Image.NEAREST)
        target = folder / f"{Path(name).with_suffix('')}_error.png"  # sub-folders kept: a/x.png and b/x.png differ
        target.parent.mkdir(parents=True, exist_ok=True)
        img.save(target)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scale.json").write_text(json.dumps({"vmax": vmax, "meaning": "mean |weighted score error| over steps and channels"}))
