"""Small in-process backbones for scorer tests."""

from __future__ import annotations

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
    from zsad.ood.feature_cache import runtime_identity
    from zsad.ood.scorers import build_scorer

    backbone = random_backbone()
    backbone.identity = {"sha256": backbone.fingerprint}
    dataset = build_dataset(OmegaConf.structured(DataConfig(name="shapes", split="test", image_size=16, options={"count": count})))
    scorer = build_scorer(scorer_name, **{"steps": 3, "network_batch": 4, **options})
    kw = dict(
        seed=0, trainer_kwargs=dict(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False),
        batch_size=4, num_workers=0, runtime=runtime_identity("cpu"),
    )
    return backbone, dataset, scorer, kw
