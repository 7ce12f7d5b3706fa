"""The base model: denoising-diffusion-pytorch's Unet inside its GaussianDiffusion, with the objective and
schedule pinned from config (the library defaults, pred_v/sigmoid, are not what scorers assume)."""

from __future__ import annotations

from denoising_diffusion_pytorch import GaussianDiffusion

from zsad.diffusion.unet import build_unet
from zsad.errors import ConfigError


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
