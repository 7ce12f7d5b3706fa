"""EMA of the weights, counted in images seen (EDM): the result does not depend on batch size or GPU count."""

from __future__ import annotations

import torch
from ema_pytorch import EMA


class ImageCountedEMA(EMA):
    """ema-pytorch's EMA whose decay per update is 0.5 ** (batch_images / halflife_images).

    With `rampup_ratio`, the half-life is capped at `rampup_ratio × images seen` so that the average
    does not drag the random initialisation along early in training.
    """

    def __init__(self, model: torch.nn.Module, halflife_images: int, rampup_ratio: float | None):
        super().__init__(model, beta=1.0 - 1e-12, update_after_step=0, update_every=1, include_online_model=False, use_foreach=True)
        self.is_frozen = False
        self.halflife_images = float(halflife_images)
        self.rampup_ratio = rampup_ratio
        self.register_buffer("images_seen", torch.tensor(0, dtype=torch.int64))
        self.batch_images = 0

    def get_current_decay(self) -> float:
        halflife = self.halflife_images
        if self.rampup_ratio is not None:
            halflife = min(halflife, float(self.images_seen.item()) * self.rampup_ratio)
        return 0.5 ** (self.batch_images / max(halflife, 1e-8))

    def step_images(self, batch_images: int) -> None:
        """Record one optimiser step over `batch_images` images (all processes), then update."""
        self.batch_images = int(batch_images)
        self.images_seen += self.batch_images
        self.update()
