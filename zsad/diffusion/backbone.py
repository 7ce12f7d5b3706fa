"""The one interface every scorer sees: ε prediction at integer timesteps of the model's schedule."""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """A frozen diffusion model.

    Attributes: `alphas_cumprod` (float64 [T]), `num_timesteps` (T), `image_size`, `fingerprint`
    (a content hash of the weights file), `trained_on` (the dataset the weights were trained on, when
    known: "celeba", "imagenet", …), and `identity` (everything about the model that changes ε̂, as
    plain data: it keys feature caches and is recorded in fitted detectors).
    """

    trained_on: str = ""

    alphas_cumprod: torch.Tensor

    def __init__(self, alphas_cumprod: torch.Tensor, image_size: int, fingerprint: str = ""):
        super().__init__()
        if alphas_cumprod.dtype != torch.float64:
            raise TypeError("alphas_cumprod must be float64 (docs/method.md §2)")
        self.register_buffer("alphas_cumprod", alphas_cumprod.clone(), persistent=False)
        self.num_timesteps = int(alphas_cumprod.numel())
        self.image_size = int(image_size)
        self.fingerprint = fingerprint
        self.identity: dict = {"sha256": fingerprint}
        self.path: str | None = None  # the weights file, when loaded from one
        self.source: str | None = None  # what the user named: the file, hf://… or a known name

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """ε̂(x_t, t) for float32 x_t [B, 3, S, S] and int64 t [B] with 0 <= t < T."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"T={self.num_timesteps}, image_size={self.image_size}"


def eps_from_prediction(objective: str, out: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Convert a network output to ε. `alpha_bar` is ᾱ_t broadcastable to x_t (float32)."""
    if objective == "pred_noise":
        return out
    sa, s1a = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if objective == "pred_v":  # v = sqrt(ᾱ) ε − sqrt(1−ᾱ) x0  ⇒  ε = sqrt(ᾱ) v + sqrt(1−ᾱ) x_t
        return sa * out + s1a * x_t
    if objective == "pred_x0":
        return (x_t - sa * out) / s1a
    raise ValueError(f"Unknown objective '{objective}' (pred_noise, pred_v, pred_x0)")
