"""Backbones from checkpoints written by `zsad train` (denoising-diffusion-pytorch Unet)."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from zsad.diffusion.backbone import Backbone, eps_from_prediction
from zsad.diffusion.fast import as_input
from zsad.errors import BackboneLoadError

EMA_PREFIX = "ema.ema_model.model."
ONLINE_PREFIX = "diffusion.model."


def is_zsad_checkpoint(obj) -> bool:
    return isinstance(obj, dict) and "state_dict" in obj and isinstance(obj.get("hyper_parameters"), dict) and "config" in obj["hyper_parameters"]


class ZsadBackbone(Backbone):
    """ε from a trained Unet; v- and x0-parameterised models are converted with the float64 schedule."""

    def __init__(self, unet: torch.nn.Module, alphas_cumprod: torch.Tensor, objective: str, image_size: int, fingerprint: str = ""):
        super().__init__(alphas_cumprod, image_size, fingerprint)
        self.unet = unet
        self.objective = objective

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.unet(as_input(self, x_t), t).contiguous()
        if self.objective == "pred_noise":
            return out
        ab = self.alphas_cumprod[t].to(x_t.dtype).view(-1, 1, 1, 1)
        return eps_from_prediction(self.objective, out, x_t, ab)


def from_zsad_checkpoint(ckpt: dict, use_ema: bool = True, fingerprint: str = "") -> ZsadBackbone:
    """Build the Unet described by the checkpoint's hyper-parameters and load EMA (or online) weights."""
    from zsad.diffusion.unet import alphas_cumprod_for, build_unet

    cfg = OmegaConf.create(ckpt["hyper_parameters"]["config"])
    unet = build_unet(cfg.model.unet)
    prefix = EMA_PREFIX if use_ema else ONLINE_PREFIX
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise BackboneLoadError(f"The checkpoint has no weights under '{prefix}' (use_ema={use_ema}).")
    try:
        unet.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise BackboneLoadError(f"Checkpoint weights do not fit the Unet in its own config: {err}") from None
    unet.eval().requires_grad_(False)
    backbone = ZsadBackbone(unet, alphas_cumprod_for(cfg.model), str(cfg.model.diffusion.objective), int(cfg.data.image_size), fingerprint)
    backbone.trained_on = str(cfg.data.name)
    return backbone
