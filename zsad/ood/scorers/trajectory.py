"""Trajectories shared by the scorers: forward noising and deterministic DDIM inversion (eta = 0)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zsad.diffusion.backbone import Backbone
from zsad.diffusion.schedule import ddim_timesteps


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


def spaced_alphas_cumprod(backbone: Backbone, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept timesteps, their float64 ᾱ). ᾱ'_k = ᾱ[t_k] (respacing rebuilds exactly these products)."""
    ts = ddim_timesteps(backbone.num_timesteps, steps)
    return ts, backbone.alphas_cumprod.detach().cpu()[ts]


def ddim_invert(backbone: Backbone, x0: torch.Tensor, steps: int, clip_denoised: bool = True) -> Inversion:
    """improved-diffusion's `ddim_reverse_sample_loop` (spec §5): float64 coefficients cast to float32,
    ᾱ'_next of the last step = 0, so the final state equals the last ε."""
    ts, ab = spaced_alphas_cumprod(backbone, steps)
    ab_next = torch.cat([ab[1:], torch.zeros(1, dtype=torch.float64)])
    sqrt_recip = torch.sqrt(1.0 / ab)
    sqrt_recipm1 = torch.sqrt(1.0 / ab - 1.0)
    device, B = x0.device, x0.shape[0]
    x = x0
    eps_list, raw_list, xt_list, states, x0_list = [], [], [], [], []
    for k in range(steps):
        states.append(x)
        t = torch.full((B,), int(ts[k]), dtype=torch.int64, device=device)
        raw = backbone.predict_eps(x, t).float()
        c1, c2 = float(sqrt_recip[k]), float(sqrt_recipm1[k])
        c1, c2 = torch.tensor(c1, dtype=torch.float32), torch.tensor(c2, dtype=torch.float32)
        x0_hat = c1 * x - c2 * raw
        if clip_denoised:
            x0_hat = x0_hat.clamp(-1, 1)
        eps = (c1 * x - x0_hat) / c2
        a_next = torch.tensor(float(ab_next[k]), dtype=torch.float32)  # sqrt taken in float32, as the reference
        x = x0_hat * torch.sqrt(a_next) + torch.sqrt(1 - a_next) * eps
        eps_list.append(eps)
        raw_list.append(raw)
        xt_list.append(x)
        x0_list.append(x0_hat)
    stack = lambda xs: torch.stack(xs)  # noqa: E731
    return Inversion(stack(eps_list), stack(raw_list), stack(xt_list), stack(states), stack(x0_list), ts)
