"""The base model: denoising-diffusion-pytorch's Unet inside its GaussianDiffusion, with the objective and
schedule pinned from config (the library defaults, pred_v/sigmoid, are not what scorers assume)."""

from __future__ import annotations

import torch
from denoising_diffusion_pytorch import GaussianDiffusion, Unet

from zsad.diffusion.schedule import cosine_alphas_cumprod, linear_alphas_cumprod
from zsad.errors import ConfigError


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


def build_diffusion(model_cfg, image_size: int, sampling_steps: int | None = None) -> GaussianDiffusion:
    """GaussianDiffusion on images already in [-1, 1] (auto_normalize off)."""
    d = model_cfg.diffusion
    unet = build_unet(model_cfg.unet)
    if image_size % unet.downsample_factor:
        raise ConfigError(
            f"image_size {image_size} must be divisible by {unet.downsample_factor} "
            f"(2^(len(model.unet.dim_mults)-1)); change data.image_size or model.unet.dim_mults."
        )
    T = int(d.timesteps)
    return GaussianDiffusion(
        unet,
        image_size=image_size,
        timesteps=T,
        sampling_timesteps=min(int(sampling_steps), T) if sampling_steps else None,
        objective=str(d.objective),
        beta_schedule=str(d.beta_schedule),
        auto_normalize=False,
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
