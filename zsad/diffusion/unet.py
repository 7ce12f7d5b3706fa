"""Our own base network (denoising-diffusion-pytorch `Unet`) and its float64 schedule, built from config.

Lives in `diffusion/` because both training (which fits it) and scoring (which loads it) need it."""

from __future__ import annotations

import torch
from denoising_diffusion_pytorch import Unet

from zsad.diffusion.schedule import cosine_alphas_cumprod, linear_alphas_cumprod


def build_unet(unet_cfg) -> Unet:
    """A denoising-diffusion-pytorch `Unet` from a UNetConfig."""
    full_attn = tuple(bool(a) for a in unet_cfg.full_attn) if unet_cfg.full_attn is not None else None
    return Unet(
        dim=int(unet_cfg.dim),
        dim_mults=tuple(int(m) for m in unet_cfg.dim_mults),
        full_attn=full_attn,
        attn_heads=int(unet_cfg.attn_heads),
        attn_dim_head=int(unet_cfg.attn_dim_head),
        dropout=float(unet_cfg.dropout),
    )


def alphas_cumprod_for(model_cfg) -> torch.Tensor:
    """float64 ᾱ of the training schedule, computed independently of the library's float32 buffers."""
    d = model_cfg.diffusion
    T = int(d.timesteps)
    if d.beta_schedule == "cosine":
        return cosine_alphas_cumprod(T)
    if d.beta_schedule == "linear":
        return linear_alphas_cumprod(T)
    from denoising_diffusion_pytorch.denoising_diffusion_pytorch import sigmoid_beta_schedule

    return torch.cumprod(1 - sigmoid_beta_schedule(T), dim=0)
