"""`zsad score`: anomaly scores (and optional error heat maps) for a folder of images."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from zsad.config.schema import DataConfig
from zsad.data import build_dataset
from zsad.diffusion.loading import load_backbone_from
from zsad.errors import ConfigError
from zsad.ood.detector import load_detector
from zsad.ood.extraction import configure_precision
from zsad.ood.scorers import build_scorer, image_seeds


def _detector_meta(path: Path) -> dict:
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        raise ConfigError(f"detector={path}: no {meta_path.name} there. Use a prefix written by `zsad evaluate`, e.g. outputs/eval/x/detectors/diffpath_v2/celeba.")
    meta = json.loads(meta_path.read_text())
    if "features" not in meta:
        raise ConfigError(f"{meta_path} does not record which scorer made its features; refit it with `zsad evaluate`.")
    return meta


def score_images(cfg: DictConfig) -> Path:
    """Write a CSV (file, anomaly_score, features…) for every image under `cfg.images`; returns its path."""
    for key in ("images", "detector"):
        if OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"{key} is not set: zsad score -c CONFIG images=DIR detector=PREFIX backbone.path=CKPT")
    det_path = Path(cfg.detector)
    meta = _detector_meta(det_path)
    feat = meta["features"]
    options = {k: v for k, v in feat["scorer"].items() if k != "name"}
    scorer = build_scorer(feat["scorer"]["name"], **options)
    detector = load_detector(det_path)
    configure_precision(False)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else ("cpu" if cfg.device == "auto" else cfg.device))
    if OmegaConf.is_missing(cfg.backbone, "path"):
        raise ConfigError("backbone.path is not set: the checkpoint the detector's features came from.")
    backbone = load_backbone_from(cfg.backbone, device=device)
    if backbone.fingerprint != feat["backbone"]["sha256"]:
        warnings.warn(f"{cfg.backbone.path} is not the checkpoint the detector was fitted with (sha256 differs); scores are not comparable.", stacklevel=2)

    dataset = build_dataset(OmegaConf.structured(DataConfig(name="imagefolder", root=str(cfg.images), split="", image_size=int(feat["image_size"]), num_workers=int(cfg.num_workers))))
    loader = DataLoader(dataset, batch_size=int(cfg.batch_size), num_workers=int(cfg.num_workers))
    heat = bool(cfg.heatmaps)
    if heat and scorer.name != "diffpath_v2":
        raise ConfigError(f"heatmaps=true needs a diffpath_v2 detector; this one was fitted on {scorer.name} features.")
    rows, maps = [], []
    for images, indices in loader:
        ids = image_seeds(int(feat["seed"]), "imagefolder", "score", indices.tolist())
        features = scorer(backbone, images, ids).numpy()
        scores = detector.score(features)
        if heat:
            with torch.no_grad():
                err = scorer.errors(scorer.network(backbone), images.to(device), ids)  # [B, K, 3, H, W]
            maps += list(err.abs().mean(dim=(1, 2)).cpu().numpy())
        for i, s, f in zip(indices.tolist(), scores, features):
            rows.append([dataset.source.describe(i), float(s), *map(float, f)])

    out = Path(cfg.output) if cfg.output else Path(cfg.images) / "zsad_scores.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "anomaly_score", *scorer.feature_names])
        writer.writerows(rows)
    if heat:
        _write_heatmaps(Path(cfg.heatmap_dir) if cfg.heatmap_dir else out.parent / "heatmaps", [r[0] for r in rows], maps)
    return out


def _write_heatmaps(folder: Path, files: list[str], maps: list[np.ndarray]) -> None:
    """One PNG per image: mean |weighted error| over steps and channels, on one colour scale for all."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import cm
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    vmax = float(np.quantile(np.stack(maps), 0.99)) or 1.0
    for name, m in zip(files, maps):
        rgb = (cm.inferno(np.clip(m / vmax, 0, 1))[..., :3] * 255).astype(np.uint8)
        img = Image.fromarray(rgb).resize((m.shape[1] * 8, m.shape[0] * 8), Image.NEAREST)
        img.save(folder / f"{Path(name).stem}_error.png")
    (folder / "scale.json").write_text(json.dumps({"vmax": vmax, "meaning": "mean |SSIM-weighted score error| over steps and channels"}))
