"""Noise schedules as float64 arrays (docs/method.md §2), and the K-step spacing `ddimK`."""

from __future__ import annotations

import math

import torch

from zsad.errors import ConfigError


def cosine_alphas_cumprod(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """ᾱ of the improved-DDPM cosine schedule, evaluated with Python floats as the reference does."""
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
    return torch.cumprod(1 - torch.tensor(betas, dtype=torch.float64), dim=0)


def linear_alphas_cumprod(T: int) -> torch.Tensor:
    """ᾱ of the DDPM linear schedule, scaled to T steps (1e-4·1000/T … 0.02·1000/T)."""
    scale = 1000.0 / T
    betas = torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def ddim_stride(T: int, K: int) -> int:
    """Smallest stride k with ceil(T/k) == K (improved-diffusion's `ddimK` rule)."""
    for k in range(1, T):
        if math.ceil(T / k) == K:
            return k
    if K == T:
        return 1
    raise ConfigError(f"Cannot take exactly {K} equally strided steps out of {T} (no k with ceil({T}/k) = {K}).")


def ddim_timesteps(T: int, K: int) -> torch.Tensor:
    """The kept original timesteps {0, k, …, (K−1)k} of `ddimK`, as int64."""
    k = ddim_stride(T, K)
    return torch.arange(0, K * k, k, dtype=torch.int64)


def noise_coefficients(alphas_cumprod: torch.Tensor, t, dtype: torch.dtype = torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sqrt(ᾱ_t), sqrt(1 − ᾱ_t)) at timesteps `t` (an int, a list or a tensor), taken in float64 from the
    schedule and only then cast to the working `dtype`: near t = 0, 1 − ᾱ in float32 loses ~1e-4 relative.
    The one place these coefficients are computed; x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε everywhere."""
    ab = alphas_cumprod.detach().to("cpu", torch.float64)[torch.as_tensor(t, dtype=torch.int64)]
    return ab.sqrt().to(dtype=dtype, device=device), (1 - ab).sqrt().to(dtype=dtype, device=device)
