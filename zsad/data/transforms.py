"""Preprocessing of docs/method.md §2: PIL in, float32 CHW in [-1, 1] out (DiffPath's ood_utils recipe)."""

from __future__ import annotations

import numpy as np
from PIL import Image
from torchvision import transforms as T

CELEBA_CROP = 140


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB: grayscale is repeated, alpha is dropped, 16-bit is scaled down."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr / (257.0 if arr.max() > 255 else 1.0), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    return img.convert("RGB")  # PIL drops alpha here without compositing


def build_transform(image_size: int, center_crop: int | None = None) -> T.Compose:
    """CenterCrop(center_crop) if given, then bilinear Resize((S, S)), then to [-1, 1]."""
    steps: list = [T.Lambda(to_rgb)]
    if center_crop:
        steps.append(T.CenterCrop(center_crop))
    steps += [
        T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BILINEAR),
        T.ToTensor(),
        T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ]
    return T.Compose(steps)
