"""The network every benchmark times: DiffPath's CelebA-32 UNet (52.5 M parameters) with seeded random weights.
One place, so that every bench script measures the same model. Bench scripts run as `python bench/NAME.py`, so
this folder is on their path."""

from __future__ import annotations


def random_celeba32_backbone(fast: bool = True, device: str = "cpu"):
    """The UNet in eval mode without gradients, on `device`, then on the fast path (SDPA, channels-last) unless
    `fast` is False. Seeds torch's global generator with 0 first, as the benchmarks always did."""
    import torch

    from zsad.diffusion.fast import set_fast_path
    from zsad.diffusion.improved_diffusion import PRESETS, ImprovedDiffusionBackbone

    torch.manual_seed(0)
    cfg = PRESETS["diffpath-celeba32"]
    backbone = ImprovedDiffusionBackbone(cfg.build().eval().requires_grad_(False), cfg, "bench").to(device)
    return set_fast_path(backbone, sdpa=fast, channels_last=fast)
