"""Trajectories shared by the scorers: forward noising and deterministic DDIM inversion (eta = 0)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from zsad.diffusion.backbone import Backbone
from zsad.diffusion.schedule import ddim_timesteps, noise_coefficients
from zsad.errors import ConfigError


@dataclass
class Inversion:
    """DDIM inversion x0 → x_K over kept steps t_0..t_{K−1}.

    eps[k]: the ε used at step k (re-derived from the clamped x̂0 when clip_denoised, as DiffPath);
    raw_eps[k]: the network output; xt[k]: the state after step k; states[k]: the state step k started
    from (states[0] = x0); x0_hat[k]: the predicted clean image at step k. All [K, B, 3, H, W]."""

    eps: torch.Tensor
    raw_eps: torch.Tensor
    xt: torch.Tensor
    states: torch.Tensor
    x0_hat: torch.Tensor
    timesteps: torch.Tensor


def kept_timesteps(num_timesteps: int, steps: int, time_range: Optional[Sequence[float]] = None) -> torch.Tensor:
    """`ddimK` spacing (docs/method.md §2), or `steps` evenly spaced timesteps from time_range[0]·(T−1)
    to time_range[1]·(T−1) (fractions of the schedule), rounded; strictly increasing, int64."""
    if time_range is None:
        return ddim_timesteps(num_timesteps, steps)
    first, last = (float(v) for v in time_range)
    ts = torch.linspace(first * (num_timesteps - 1), last * (num_timesteps - 1), steps, dtype=torch.float64).round().long()
    if len(ts.unique()) != steps:
        raise ConfigError(f"time_range {list(time_range)} holds fewer than {steps} distinct timesteps of {num_timesteps}; widen it or use fewer steps.")
    return ts


def spaced_alphas_cumprod(backbone: Backbone, steps: int, time_range: Optional[Sequence[float]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept timesteps, their float64 ᾱ). ᾱ'_k = ᾱ[t_k] (respacing rebuilds exactly these products)."""
    ts = kept_timesteps(backbone.num_timesteps, steps, time_range)
    return ts, backbone.alphas_cumprod.detach().cpu()[ts]


def forward_noised(backbone: Backbone, x0: torch.Tensor, ts: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_t = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε for every kept t at once: (x_t [B, K, …], sqrt(ᾱ), sqrt(1−ᾱ)) in
    x0's dtype; `noise` is [B, K, …] (or broadcastable)."""
    K = len(ts)
    sa, s1a = (c.view(1, K, 1, 1, 1) for c in noise_coefficients(backbone.alphas_cumprod, ts, x0.dtype, x0.device))
    return sa * x0.unsqueeze(1) + s1a * noise, sa, s1a


def ddim_invert(backbone: Backbone, x0: torch.Tensor, steps: int, clip_denoised: bool = True, time_range: Optional[Sequence[float]] = None) -> Inversion:
    """improved-diffusion's `ddim_reverse_sample_loop` (docs/improved_diffusion_format.md §5), in x0's dtype; ᾱ'_next of the last step
    = 0, so the final state equals the last ε.

    REFERENCE_DDIM_COEFFICIENTS: the one place that does not read `noise_coefficients`. To match the
    reference bit for bit in float32 it uses the reference's own forms: sqrt(1/ᾱ) and sqrt(1/ᾱ − 1) taken
    in float64 and cast, and sqrt(ᾱ_next), sqrt(1 − ᾱ_next) taken after the cast, in the working dtype."""
    ts, ab = spaced_alphas_cumprod(backbone, steps, time_range)
    ab_next = torch.cat([ab[1:], torch.zeros(1, dtype=torch.float64)])
    sqrt_recip = torch.sqrt(1.0 / ab)
    sqrt_recipm1 = torch.sqrt(1.0 / ab - 1.0)
    device, B, dtype = x0.device, x0.shape[0], x0.dtype
    x = x0
    eps_list, raw_list, xt_list, states, x0_list = [], [], [], [], []
    for k in range(steps):
        states.append(x)
        t = torch.full((B,), int(ts[k]), dtype=torch.int64, device=device)
        raw = backbone.predict_eps(x, t).to(dtype)
        c1, c2 = torch.tensor(float(sqrt_recip[k]), dtype=dtype), torch.tensor(float(sqrt_recipm1[k]), dtype=dtype)
        x0_hat = c1 * x - c2 * raw
        if clip_denoised:
            x0_hat = x0_hat.clamp(-1, 1)
        eps = (c1 * x - x0_hat) / c2
        a_next = torch.tensor(float(ab_next[k]), dtype=dtype)
        x = x0_hat * torch.sqrt(a_next) + torch.sqrt(1 - a_next) * eps
        eps_list.append(eps)
        raw_list.append(raw)
        xt_list.append(x)
        x0_list.append(x0_hat)
    stack = lambda xs: torch.stack(xs)  # noqa: E731
    return Inversion(stack(eps_list), stack(raw_list), stack(xt_list), stack(states), stack(x0_list), ts)
