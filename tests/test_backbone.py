"""Backbone interface: v- and x0-parameterised outputs convert to ε exactly (closed form)."""

import pytest
import torch

from zsad.diffusion.backbone import eps_from_prediction
from zsad.diffusion.schedule import cosine_alphas_cumprod, ddim_stride, linear_alphas_cumprod


@pytest.mark.parametrize("t", [0, 250, 999])
def test_v_and_x0_predictions_convert_to_eps(t):
    g = torch.Generator().manual_seed(t)
    x0 = torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    ab = cosine_alphas_cumprod(1000)[t].view(1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    assert torch.allclose(eps_from_prediction("pred_v", v, x_t, ab), eps, atol=1e-10)
    if t > 0:  # at t = 0, 1 − ᾱ is tiny and the x0 route is ill-conditioned by nature
        assert torch.allclose(eps_from_prediction("pred_x0", x0, x_t, ab), eps, atol=1e-6)
    assert eps_from_prediction("pred_noise", eps, x_t, ab) is eps


def test_schedules_are_float64_and_monotone():
    for ab in (cosine_alphas_cumprod(1000), linear_alphas_cumprod(1000)):
        assert ab.dtype == torch.float64 and (ab[1:] < ab[:-1]).all() and 0 < ab[-1] < ab[0] < 1
    with pytest.raises(Exception, match="Cannot take exactly 7"):
        ddim_stride(10, 7)
