"""Diffusion backbones behind one interface (ε prediction at integer timesteps), and schedules."""

from zsad.diffusion.backbone import Backbone
from zsad.diffusion.schedule import cosine_alphas_cumprod, ddim_stride, ddim_timesteps, linear_alphas_cumprod
from zsad.errors import BackboneLoadError

__all__ = ["Backbone", "BackboneLoadError", "cosine_alphas_cumprod", "ddim_stride", "ddim_timesteps", "linear_alphas_cumprod"]
