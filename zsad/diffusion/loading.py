"""`load_backbone(path, ...)`: one entry point for every checkpoint format, always safe (weights_only)."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any, Optional

import torch

from zsad.diffusion.backbone import Backbone
from zsad.diffusion.fast import set_fast_path
from zsad.errors import BackboneLoadError

FORMATS = ("auto", "zsad", "improved-diffusion")


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Content hash of a file (keys feature caches to the exact weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def safe_load(path: str | Path) -> Any:
    """torch.load with weights_only=True; a file that needs code to unpickle is refused, not run."""
    path = Path(path)
    if not path.is_file():
        raise BackboneLoadError(f"Checkpoint '{path}' does not exist. Train one with `zsad train` or set backbone.path to a .ckpt/.pt file.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise BackboneLoadError(
            f"Refusing to load '{path}': it contains Python objects that only a full unpickle could build, "
            f"which can run arbitrary code. zsad loads checkpoints with weights_only=True. ({str(err).splitlines()[0]})"
        ) from None
    except Exception as err:  # noqa: BLE001 - zip/format errors of all kinds
        raise BackboneLoadError(f"'{path}' is not a PyTorch checkpoint ({type(err).__name__}: {err}).") from None


def detect_format(obj: Any) -> str:
    from zsad.diffusion.zsad_backbone import is_zsad_checkpoint

    if is_zsad_checkpoint(obj):
        return "zsad"
    if isinstance(obj, dict) and "time_embed.0.weight" in obj and "input_blocks.0.0.weight" in obj:
        return "improved-diffusion"
    keys = list(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
    raise BackboneLoadError(
        f"Unrecognised checkpoint layout (first keys: {keys}). Expected a `zsad train` checkpoint or an "
        "improved-diffusion state dict; pass format=... explicitly if detection fails."
    )


def load_backbone(
    path: str | Path,
    format: str = "auto",
    config: Optional[Any] = None,
    use_ema: bool = True,
    device: str | torch.device = "cpu",
    fast_path: bool = True,
) -> Backbone:
    """Load a frozen diffusion backbone (eval mode) from `path`.

    path: a checkpoint file, hf://OWNER/REPO/FILE[@REVISION], or a known name (zsad.diffusion.hub.KNOWN_BACKBONES:
    diffpath-celeba32, openai-imagenet64, zsad-demo), whose format and config apply unless given here.
    format: "auto" | "zsad" | "improved-diffusion". config: for improved-diffusion, a preset name
    (diffpath-celeba32, openai-imagenet64), a dict or a JSON file of its hyper-parameters.
    use_ema: for zsad checkpoints, load the EMA weights (default) or the online ones.
    fast_path: fused attention and channels-last convolutions (zsad.diffusion.fast); False = the plain path.
    """
    if format not in FORMATS:
        raise BackboneLoadError(f"Unknown backbone format '{format}'. Known: {', '.join(FORMATS)}.")
    from zsad.diffusion.hub import resolve_backbone

    spec = str(path)
    resolved = resolve_backbone(path)  # a local file resolves to itself; names and hf:// to a cached file
    path = resolved.path
    format = resolved.format if format == "auto" else format  # the caller's explicit choice wins over the registry's
    config = resolved.config if config is None else config
    obj = safe_load(path)
    kind = detect_format(obj) if format == "auto" else format
    fingerprint = file_sha256(path)
    if kind == "zsad":
        from zsad.diffusion.zsad_backbone import from_zsad_checkpoint, is_zsad_checkpoint

        if not is_zsad_checkpoint(obj):
            raise BackboneLoadError(f"'{path}' is not a `zsad train` checkpoint (no hyper_parameters.config).")
        backbone = from_zsad_checkpoint(obj, use_ema=use_ema, fingerprint=fingerprint)
        model_config = obj["hyper_parameters"]["config"].get("model")
    else:
        import dataclasses

        from zsad.diffusion.improved_diffusion import from_improved_diffusion_state_dict

        backbone = from_improved_diffusion_state_dict(obj, config=config, fingerprint=fingerprint)
        model_config = dataclasses.asdict(backbone.config)  # the content, not a path to a JSON that can change
    # Weights and the configuration that builds the network: what ε̂ depends on (the path does not).
    backbone.identity = {"sha256": fingerprint, "format": kind, "model_config": model_config, "use_ema": bool(use_ema) if kind == "zsad" else None}
    backbone.path = str(Path(path).absolute())  # recorded in feature recipes, never compared (the sha256 is)
    backbone.source = spec if (resolved.name or spec.startswith("hf:")) else backbone.path  # what to ask for again
    if resolved.trained_on and not getattr(backbone, "trained_on", ""):
        backbone.trained_on = resolved.trained_on  # e.g. a registry entry given a JSON config instead of its preset
    backbone = backbone.to(device).eval()
    return set_fast_path(backbone, sdpa=fast_path, channels_last=fast_path)


def backbone_settings(backbone_cfg) -> dict:
    """A BackboneConfig node (or mapping) as plain data: path, format, config, use_ema."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(backbone_cfg, resolve=True) if OmegaConf.is_config(backbone_cfg) else dict(backbone_cfg)
    return {k: plain.get(k) for k in ("path", "format", "config", "use_ema")}


def load_backbone_from(backbone_cfg, device: str | torch.device = "cpu", fast_path: bool = True) -> Backbone:
    """`load_backbone` with the settings of a config's `backbone:` section (path: a file, hf://... or a known name)."""
    s = backbone_settings(backbone_cfg)
    return load_backbone(s["path"], format=s["format"] or "auto", config=s["config"], use_ema=bool(s["use_ema"]), device=device, fast_path=fast_path)
