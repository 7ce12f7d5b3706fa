"""The inference fast path of a backbone: fused attention (scaled_dot_product_attention) and
channels-last memory for the convolutions. Same maths, other kernels: features move only by float32
rounding, within the improved-diffusion fixture tolerances (tests/test_improved_diffusion.py runs them
with the fast path on). `make bench` measures each part against the plain path in one process."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

PARTS = ("sdpa", "channels_last")


def set_fast_path(backbone: nn.Module, sdpa: bool = True, channels_last: bool = True) -> nn.Module:
    """Switch the parts on or off in place; returns the backbone."""
    for module in backbone.modules():
        if hasattr(module, "use_sdpa"):  # improved-diffusion AttentionBlock
            module.use_sdpa = sdpa
        if type(module).__name__ == "Attend" and hasattr(module, "flash"):  # denoising-diffusion-pytorch
            module.flash = sdpa
    net = getattr(backbone, "unet", None)
    if net is not None:
        net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    backbone.channels_last = channels_last
    backbone.fast_path = {"sdpa": sdpa, "channels_last": channels_last}
    return backbone


def as_input(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x in the memory format the network's weights use."""
    return x.contiguous(memory_format=torch.channels_last) if getattr(backbone, "channels_last", False) else x


@contextmanager
def plain_attention(backbone: nn.Module) -> Iterator[None]:
    """Attention on the plain path for the duration (fused attention back as it was after): forward-mode AD needs
    it, as torch 2.14's fused CPU attention kernel has no forward-mode rule and denoising-diffusion-pytorch's
    `Attend` picks its kernels itself."""
    saved = []
    for module in backbone.modules():
        for name in ("use_sdpa", "flash"):
            if hasattr(module, name) and (name == "use_sdpa" or type(module).__name__ == "Attend"):
                saved.append((module, name, getattr(module, name)))
                setattr(module, name, False)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
