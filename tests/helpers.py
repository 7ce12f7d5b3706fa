"""Small in-process backbones for scorer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from zsad.diffusion.backbone import Backbone
from zsad.diffusion.schedule import cosine_alphas_cumprod
from zsad.diffusion.zsad_backbone import ZsadBackbone


def random_backbone(seed: int = 0, image_size: int = 16, timesteps: int = 1000) -> ZsadBackbone:
    """A randomly initialised tiny denoising-diffusion-pytorch Unet behind the Backbone interface."""
    from zsad.diffusion.unet import build_unet

    torch.manual_seed(seed)
    cfg = OmegaConf.create({"dim": 8, "dim_mults": [1, 2], "full_attn": [False, True], "attn_heads": 2, "attn_dim_head": 8, "dropout": 0.0})
    unet = build_unet(cfg).eval()
    return ZsadBackbone(unet, cosine_alphas_cumprod(timesteps), "pred_noise", image_size, fingerprint=f"random-{seed}")


class OracleBackbone(Backbone):
    """Knows the single clean image x0 every input was made from, so it predicts the exact noise."""

    def __init__(self, x0: torch.Tensor, timesteps: int = 1000):
        super().__init__(cosine_alphas_cumprod(timesteps), x0.shape[-1], "oracle")
        self.x0 = x0

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return ((x_t.double() - ab.sqrt() * self.x0.double()) / (1 - ab).sqrt()).float()


class NaNBackbone(Backbone):
    """Returns NaN for images whose first pixel is positive."""

    def __init__(self):
        super().__init__(cosine_alphas_cumprod(1000), 8, "nan")

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x_t)
        out[x_t[:, 0, 0, 0] > 0] = float("nan")
        return out


class ZeroBackbone(Backbone):
    """Predicts ε̂ = 0 everywhere (a useless model)."""

    def __init__(self):
        super().__init__(cosine_alphas_cumprod(1000), 16, "zero")

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x_t)


def extraction_setup(scorer_name: str = "diffpath_v2", count: int = 10, **options):
    """(backbone, dataset, scorer, keyword arguments) for an in-process `extract_features` on CPU."""
    from omegaconf import OmegaConf

    from zsad.config.schema import DataConfig
    from zsad.data import build_dataset
    from zsad.scoring.scorers import build_scorer

    backbone = random_backbone()
    backbone.identity = {"sha256": backbone.fingerprint}
    dataset = build_dataset(OmegaConf.structured(DataConfig(name="shapes", split="test", image_size=16, options={"count": count})))
    scorer = build_scorer(scorer_name, **{"steps": 3, "network_batch": 4, **options})
    kw = dict(
        recipe=recipe_of(scorer, backbone, dataset),
        trainer_kwargs=dict(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False),
        batch_size=4, num_workers=0,
    )
    return backbone, dataset, scorer, kw


def recipe_of(scorer, backbone, dataset, **changes):
    """The CPU feature recipe of `scorer` on `backbone` for `dataset` (seed 0), with fields replaced by `changes`."""
    import dataclasses

    from zsad.scoring.recipe import recipe_for

    return dataclasses.replace(recipe_for(scorer, backbone, dataset.spec, 0, "cpu"), **changes)


# --------------------------------------------------------------------------- an analytic backbone
ANALYTIC_T = 1000
CHANNEL_OFFSET = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64).view(1, 3, 1, 1)


def analytic_coefficients(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """a_t, b_t, g_t as float64 [N] for integer timesteps t [N]."""
    t = t.to(torch.float64)
    return 0.3 + 0.5 * t / ANALYTIC_T, 0.5 * torch.sin(t / 100), 0.2 * torch.cos(t / 150)


def analytic_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """ε̂(x, t) = a_t·x + b_t·c + g_t·roll(x) (c a per-channel offset, roll one pixel along the width), in x's dtype."""
    a, b, g = (c.to(x.dtype).view(-1, 1, 1, 1) for c in analytic_coefficients(t.cpu()))
    return a * x + b * CHANNEL_OFFSET.to(x.dtype) + g * torch.roll(x, shifts=1, dims=-1)


class AnalyticBackbone(Backbone):
    """A closed-form ε̂ that computes in whatever dtype it is given (float64 for dtype-exact checks)."""

    def __init__(self, alphas_cumprod: torch.Tensor | None = None, image_size: int = 16):
        super().__init__(cosine_alphas_cumprod(ANALYTIC_T) if alphas_cumprod is None else alphas_cumprod, image_size, "analytic")

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return analytic_eps(x_t, t)


def level_coded(shape: tuple) -> np.ndarray:
    """A stand-in photograph whose 4×4 blocks are flat at levels 10, 25, …, 235 (block k = i·4 + j);
    the strips a 4×4 grid leaves over are 255, which no crop may touch."""
    from zsad.data.package_images import GRID

    h, w = shape[:2]
    img = np.full((h, w), 255, np.uint8)
    bh, bw = h // GRID, w // GRID
    for i in range(GRID):
        for j in range(GRID):
            img[i * bh : (i + 1) * bh, j * bw : (j + 1) * bw] = 10 + 15 * (i * GRID + j)
    return img if len(shape) == 2 else np.repeat(img[..., None], shape[2], axis=2)


class IsotropicGaussianBackbone(Backbone):
    """The exact denoiser for data N(0, s²I): x_t ~ N(0, v_t·I) with v_t = s²ᾱ_t + 1 − ᾱ_t, so the score is −x_t/v_t
    and ε̂ = −σ_t·score = σ_t·x_t/v_t (σ_t = sqrt(1 − ᾱ_t)); the score's Jacobian trace is −d/v_t."""

    def __init__(self, scale: float = 0.5, image_size: int = 4, timesteps: int = 1000):
        super().__init__(cosine_alphas_cumprod(timesteps), image_size, "isotropic-gaussian")
        self.scale = float(scale)

    def variance(self, t: torch.Tensor) -> torch.Tensor:
        ab = self.alphas_cumprod[t].to(torch.float64)
        return self.scale**2 * ab + 1 - ab

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.alphas_cumprod[t].to(torch.float64)
        factor = ((1 - ab).sqrt() / self.variance(t)).to(x_t.dtype).view(-1, *[1] * (x_t.ndim - 1))
        return factor * x_t


def files_under(root: Path) -> dict[str, bytes]:
    """Every file under `root` by its relative path, with its bytes: two folders are equal file by file."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_visa_layout(root: Path, category: str, train: list, test_good: list, anomalies: list) -> None:
    """VisA's own layout for `category` under `root`: <category>/Data/Images/{Normal,Anomaly}/*.JPG (JPEG, as VisA ships),
    <category>/Data/Masks/Anomaly/*.png and split_csv/1cls.csv (the split anomalib's Visa applies). `train` and
    `test_good` are (name, PIL image) pairs, `anomalies` (name, image, mask) triples; names have no extension."""
    rows, data = ["object,split,label,image,mask"], root / category / "Data"
    for sub in ("Images/Normal", "Images/Anomaly", "Masks/Anomaly"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    for split, items in (("train", train), ("test", test_good)):
        for name, image in items:
            image.convert("RGB").save(data / "Images" / "Normal" / f"{name}.JPG", quality=95)
            rows.append(f"{category},{split},normal,{category}/Data/Images/Normal/{name}.JPG,")
    for name, image, mask in anomalies:
        image.convert("RGB").save(data / "Images" / "Anomaly" / f"{name}.JPG", quality=95)
        mask.save(data / "Masks" / "Anomaly" / f"{name}.png")
        rows.append(f"{category},test,anomaly,{category}/Data/Images/Anomaly/{name}.JPG,{category}/Data/Masks/Anomaly/{name}.png")
    (root / "split_csv").mkdir(exist_ok=True)
    with (root / "split_csv" / "1cls.csv").open("a") as f:
        f.write("\n".join(rows if f.tell() == 0 else rows[1:]) + "\n")
