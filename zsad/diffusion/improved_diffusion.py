"""Published improved-diffusion checkpoints (DiffPath CelebA-32, OpenAI ImageNet-64) as zsad backbones.

Hyper-parameters are not stored in those files (docs/improved_diffusion_format.md §1): they come from a preset, a dict, or a JSON
file with the keys of `create_model_and_diffusion` (tests/fixtures/improved_diffusion/small_config.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

import torch

from zsad.diffusion.backbone import Backbone
from zsad.diffusion.fast import as_input
from zsad.diffusion.improved_unet import ImprovedUNet
from zsad.diffusion.schedule import cosine_alphas_cumprod, linear_alphas_cumprod
from zsad.errors import BackboneLoadError, ConfigError


@dataclass(frozen=True)
class ImprovedDiffusionConfig:
    """The `create_model_and_diffusion` settings that change the network or the schedule."""

    image_size: int = 64
    num_channels: int = 128
    num_res_blocks: int = 2
    num_heads: int = 4
    num_heads_upsample: int = -1
    attention_resolutions: str = "16,8"
    dropout: float = 0.0
    learn_sigma: bool = False
    class_cond: bool = False
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    rescale_timesteps: bool = True
    use_scale_shift_norm: bool = True

    def build(self) -> ImprovedUNet:
        if self.class_cond:
            raise ConfigError("class-conditional improved-diffusion models are not supported (no label input in zsad).")
        return ImprovedUNet(
            image_size=self.image_size,
            model_channels=self.num_channels,
            num_res_blocks=self.num_res_blocks,
            attention_resolutions=[int(r) for r in str(self.attention_resolutions).split(",") if r.strip()],
            num_heads=self.num_heads,
            num_heads_upsample=self.num_heads_upsample,
            dropout=self.dropout,
            learn_sigma=self.learn_sigma,
            use_scale_shift_norm=self.use_scale_shift_norm,
        )

    def alphas_cumprod(self) -> torch.Tensor:
        if self.noise_schedule == "cosine":
            return cosine_alphas_cumprod(self.diffusion_steps)
        if self.noise_schedule == "linear":
            return linear_alphas_cumprod(self.diffusion_steps)
        raise ConfigError(f"Unknown improved-diffusion noise_schedule '{self.noise_schedule}' (cosine, linear).")


# docs/improved_diffusion_format.md §1.1: the DiffPath YAMLs merged over improved-diffusion's defaults.
PRESETS: dict[str, ImprovedDiffusionConfig] = {
    "diffpath-celeba32": ImprovedDiffusionConfig(
        image_size=32, num_channels=128, num_res_blocks=3, dropout=0.3, learn_sigma=True, diffusion_steps=4000, noise_schedule="cosine"
    ),
    "openai-imagenet64": ImprovedDiffusionConfig(
        image_size=64, num_channels=128, num_res_blocks=3, dropout=0.0, learn_sigma=True, diffusion_steps=4000, noise_schedule="cosine"
    ),
}
PRESET_TRAINED_ON = {"diffpath-celeba32": "celeba", "openai-imagenet64": "imagenet"}
PRESET_FILES = {"diffpath-celeba32": "celeba_ema_0.9999_499999.pt", "openai-imagenet64": "imagenet64_uncond_100M_1500K.pt"}
# Keys of create_model_and_diffusion that do not change the network or the ε it predicts.
IGNORED_KEYS = {"timestep_respacing", "use_kl", "predict_xstart", "sigma_small", "rescale_learned_sigmas", "use_checkpoint", "use_zero_module", "use_fp16"}


def resolve_config(config: Any) -> ImprovedDiffusionConfig:
    """A preset name, an ImprovedDiffusionConfig, a dict, or a JSON file (optionally wrapping the kwargs
    under `create_model_and_diffusion_kwargs`, as the test fixtures do)."""
    if isinstance(config, ImprovedDiffusionConfig):
        return config
    if config is None:
        raise BackboneLoadError(f"An improved-diffusion checkpoint needs backbone.config: a preset ({', '.join(PRESETS)}), a dict or a JSON file.")
    if isinstance(config, str) and config in PRESETS:
        return PRESETS[config]
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise BackboneLoadError(f"backbone.config '{config}' is neither a preset ({', '.join(PRESETS)}) nor a JSON file.")
        config = json.loads(path.read_text())
    config = dict(config)
    config = dict(config.get("create_model_and_diffusion_kwargs", config))
    valid = {f.name for f in fields(ImprovedDiffusionConfig)}
    unknown = set(config) - valid - IGNORED_KEYS
    if unknown:
        raise ConfigError(f"Unknown improved-diffusion setting(s) {sorted(unknown)}; known: {sorted(valid)}.")
    if config.get("predict_xstart"):
        raise ConfigError("predict_xstart=True models are not supported (zsad converts only ε-predicting improved-diffusion models).")
    return ImprovedDiffusionConfig(**{k: v for k, v in config.items() if k in valid})


def key_shapes(config: ImprovedDiffusionConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key and shape of the network `config` describes (built on the meta device)."""
    with torch.device("meta"):
        model = config.build()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _mismatch_report(expected: dict, state_dict: dict) -> Optional[str]:
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [f"{k}: file {tuple(state_dict[k].shape)} vs model {expected[k]}"
             for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    if not (missing or unexpected or wrong):
        return None
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)):
        if items:
            parts.append(f"{len(items)} {label}: {', '.join(items[:8])}{' …' if len(items) > 8 else ''}")
    return "; ".join(parts)


class ImprovedDiffusionBackbone(Backbone):
    """ε = output channels 0..2 of the UNet fed t_model = t·1000/T when rescale_timesteps (docs/improved_diffusion_format.md §4)."""

    def __init__(self, unet: ImprovedUNet, config: ImprovedDiffusionConfig, fingerprint: str = ""):
        super().__init__(config.alphas_cumprod(), config.image_size, fingerprint)
        self.unet = unet
        self.config = config
        self.time_scale = 1000.0 / config.diffusion_steps if config.rescale_timesteps else 1.0
        self.trained_on = next((PRESET_TRAINED_ON[name] for name, preset in PRESETS.items() if preset == config), "")

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(as_input(self, x_t), t.float() * self.time_scale)[:, :3].contiguous()


def from_improved_diffusion_state_dict(state_dict: Any, config: Any = None, fingerprint: str = "") -> ImprovedDiffusionBackbone:
    """Strictly load a flat improved-diffusion state dict; mismatches list the keys and the preset that fits."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise BackboneLoadError("An improved-diffusion checkpoint must be a flat mapping of parameter name to tensor.")
    cfg = resolve_config(config)
    problem = _mismatch_report(key_shapes(cfg), state_dict)
    if problem:
        fits = [name for name, preset in PRESETS.items() if _mismatch_report(key_shapes(preset), state_dict) is None]
        hint = (f" The preset that fits this file is: {', '.join(fits)} (backbone.config={fits[0]})." if fits
                else " No shipped preset fits it either; pass the model's own settings as backbone.config=<json>.")
        raise BackboneLoadError(f"Checkpoint does not match the improved-diffusion config {cfg}: {problem}.{hint}")
    with torch.device("meta"):
        unet = cfg.build()
    unet.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True, assign=True)
    unet.eval().requires_grad_(False)
    return ImprovedDiffusionBackbone(unet, cfg, fingerprint)
