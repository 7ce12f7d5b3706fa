"""Preprocessing of docs/method.md §2: PIL in, float32 CHW in [-1, 1] out (DiffPath's ood_utils recipe).

Pixel values are converted by one fixed rule per run (design §7 "Inputs"), never from an image's own values:

* 8-bit modes ("L", "RGB", "P", ...): v / 255.
* Integer containers wider than 8 bits ("I;16*", "I", 16-bit colour read by `zsad.data.base.open_image`): the
  run's bit depth B (8, 10, 12, 14 or 16: `decide_bit_depth` on the fit images, or the user's choice) keeps the
  top 8 of the B bits: ⌊v / 2^(B−8)⌋ (clipped to 255), so 2^B − 1 is white and an 8-bit x stored as x·2^(B−8)
  (a left shift, as cameras write it), as round(x·(2^B − 1)/255) (a rescale) or, at 16 bits, as x·257 reads back
  as x exactly. Without a bit depth, the container's own: B = 16.
* Float ("F", float TIFFs): already in [0, 1] (1 = white), clipped.
* Alpha (of any container, scaled by that container's own maximum, as PNG defines it) is composited on
  `BACKGROUND`.

The result is rounded to 8-bit RGB and then goes through the same PIL steps as any 8-bit image, so an 8-bit image
is preprocessed exactly as before and its wide twins (above) give the identical tensor at any size.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from PIL import Image
from torchvision import transforms as T

from zsad.errors import ConfigError

CELEBA_CROP = 140
# The version of this module's preprocessing (resize, bit-depth rule, alpha background), recorded in every feature
# recipe (`zsad fit` and `zsad evaluate`): a change here changes the features, so cached features and fitted detectors
# of another version are recomputed or refused instead of reused.
PREPROCESSING_VERSION = 2
BIT_DEPTHS = (8, 10, 12, 14, 16)
# Black: compositing on it is premultiplied colour, and fully transparent pixels, which most tools store as
# (0, 0, 0, 0), look as they did when alpha was dropped. One fixed colour for fit and score is what matters.
BACKGROUND = (0, 0, 0)
# Key of `Image.info` under which `open_image` keeps the samples of a colour image that PIL cannot hold
# (16-bit RGB(A) or gray+alpha, float RGB): uint16 or float32, height × width × channels. The PIL image itself
# then holds an 8-bit preview (the high bytes), for anything that reads it directly.
SAMPLES = "zsad.samples"

_EIGHT_BIT = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
_WIDE_INTEGER = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_LAYOUT = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def full_scale(bit_depth: int) -> int:
    """The stored value that is white at this bit depth: 2^B − 1."""
    return (1 << check_bit_depth(bit_depth)) - 1


def check_bit_depth(bit_depth: int) -> int:
    """`bit_depth` if it is one of `BIT_DEPTHS`, else a ConfigError."""
    if not isinstance(bit_depth, (int, np.integer)) or isinstance(bit_depth, bool) or int(bit_depth) not in BIT_DEPTHS:
        raise ConfigError(f"bit depth {bit_depth!r} is not one of {', '.join(map(str, BIT_DEPTHS))} (the significant bits of the pixel values).")
    return int(bit_depth)


def with_samples(preview: Image.Image, samples: np.ndarray) -> Image.Image:
    """`preview` carrying the full-precision `samples` (height × width × channels) for `to_rgb`."""
    preview.info[SAMPLES] = samples
    return preview


def samples_of(img: Image.Image) -> tuple[np.ndarray, str]:
    """The image's samples at full precision, height × width × channels, and their kind: "8-bit", "wide" (integer
    wider than 8 bits) or "float". Modes PIL must convert first (CMYK, P, ...) come back as 8-bit RGB(A)."""
    held = img.info.get(SAMPLES)
    if held is not None:
        if held.shape[:2] != (img.height, img.width):
            raise ConfigError(f"This {held.dtype} image was resized or cropped as an 8-bit PIL preview ({img.width}×{img.height}, samples "
                              f"{held.shape[1]}×{held.shape[0]}): its full-precision pixels are lost. Convert it with zsad.data.transforms.to_rgb first.")
        return held, "float" if held.dtype.kind == "f" else "wide"
    mode = img.mode
    if mode in _WIDE_INTEGER:
        return np.asarray(img).astype(np.int64)[..., None], "wide"
    if mode == "F":
        return np.asarray(img, dtype=np.float32)[..., None], "float"
    if mode in ("L", "RGB", "RGBA", "LA"):
        if "transparency" in img.info and mode in ("L", "RGB"):
            return np.asarray(img.convert("RGBA")), "8-bit"
        arr = np.asarray(img)
        return (arr[..., None] if arr.ndim == 2 else arr), "8-bit"
    if mode == "La":  # PIL converts premultiplied gray+alpha only to "LA"
        return np.asarray(img.convert("LA")), "8-bit"
    if mode in _EIGHT_BIT:
        target = "RGBA" if mode in ("PA", "RGBa") or (mode == "P" and "transparency" in img.info) else "RGB"
        try:
            return np.asarray(img.convert(target)), "8-bit"
        except (ValueError, OSError) as err:
            raise _unsupported(mode, str(err)) from err
    raise _unsupported(mode)


def _unsupported(mode: str, detail: str = "") -> ConfigError:
    return ConfigError(f"Cannot read pixels of image mode '{mode}'{' (' + detail + ')' if detail else ''}. Save the images as 8- or 16-bit "
                       "grayscale or RGB(A) PNG or TIFF, or as float TIFF with values in [0, 1].")


def to_rgb(img: Image.Image, bit_depth: Optional[int] = None, background: Sequence[int] = BACKGROUND) -> Image.Image:
    """Any mode to 8-bit RGB by the fixed rule of the module docstring: grayscale is repeated, alpha is composited on
    `background` (0–255 RGB), wide integers keep their top 8 of `bit_depth` bits (16 when None), floats are in [0, 1]."""
    if img.mode == "RGB" and SAMPLES not in img.info and "transparency" not in img.info:
        return img
    if img.mode == "L" and "transparency" not in img.info:
        return img.convert("RGB")
    arr, kind = samples_of(img)
    channels = arr.shape[-1]
    if channels not in _LAYOUT:
        raise _unsupported(f"{img.mode} with {channels} channels")
    colour, alpha = (arr[..., :-1], arr[..., -1:]) if channels in (2, 4) else (arr, None)
    if kind == "wide":  # the top 8 bits: ⌊v / 2^(B−8)⌋ / 255, exact for left-shifted and for rescaled 8-bit twins
        depth = check_bit_depth(bit_depth or 16)
        largest = int(colour.max()) if colour.size else 0
        if largest > full_scale(depth):
            raise ConfigError(f"an image holds pixel values up to {largest}, beyond this run's {depth}-bit range (0…{full_scale(depth)}): it has "
                              "another bit depth than the images the detector was fitted on. Fit on images of this bit depth, or pass "
                              "--bit-depth when fitting.")
        rgb = np.floor(colour.astype(np.float64) / float(1 << (depth - 8))) / 255.0
    else:
        rgb = np.clip(np.nan_to_num(colour.astype(np.float64) / (255.0 if kind == "8-bit" else 1.0)), 0.0, 1.0)
    if alpha is not None:
        opacity = np.clip(np.nan_to_num(alpha.astype(np.float64) / {"8-bit": 255.0, "wide": 65535.0, "float": 1.0}[kind]), 0.0, 1.0)
        rgb = rgb * opacity + (np.asarray(background, np.float64) / 255.0) * (1.0 - opacity)
    out = np.round(rgb * 255.0).astype(np.uint8)
    return Image.fromarray(np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out, "RGB")


def _colour_samples(img: Image.Image) -> Optional[tuple[np.ndarray, str]]:
    """Colour samples (alpha left out) and kind of an image that is not plain 8-bit; None for plain 8-bit ones."""
    if img.mode in _EIGHT_BIT and SAMPLES not in img.info:
        return None
    arr, kind = samples_of(img)
    return (arr[..., :-1] if arr.shape[-1] in (2, 4) else arr), kind


def _header_says_8_bit(path: Path) -> bool:
    """True when the file's header alone shows 8-bit samples (PIL's lazy open: no pixels decoded)."""
    from zsad.data.base import pil_loses_bits

    try:
        with Image.open(path) as img:
            return img.mode in _EIGHT_BIT and not pil_loses_bits(img)
    except (OSError, ValueError):
        return False


def decide_bit_depth(images: Iterable[Image.Image | str | Path], override: Optional[int] = None) -> int:
    """The run's bit depth from the fit images (PIL images or paths): `override` when given, else 8 when no image
    has integer samples wider than 8 bits, else the smallest of 8/10/12/14/16 bits that holds the largest colour
    value of all of them (2^B − 1 ≥ max). Float images must lie in [0, 1] and do not take part."""
    if override is not None:
        return check_bit_depth(override)
    from zsad.data.base import open_image

    largest: Optional[float] = None
    for item in images:
        if isinstance(item, (str, Path)):
            if _header_says_8_bit(Path(item)):
                continue
            item = open_image(item)
        found = _colour_samples(item)
        if found is None or found[0].size == 0:
            continue
        colour, kind = found
        if kind == "wide":
            largest = max(float(colour.max()), largest or 0.0)
        elif kind == "float":
            lo, hi = float(np.nanmin(colour)), float(np.nanmax(colour))
            if lo < 0.0 or hi > 1.0:
                raise ConfigError(f"A float image has values from {lo:.4g} to {hi:.4g}; zsad reads float images as [0, 1] (1 = white). "
                                  "Rescale them to [0, 1], or save them as 16-bit integer images.")
    if largest is None:
        return 8
    if largest > 65535:
        raise ConfigError(f"Integer images with values up to {largest:.0f} do not fit 16 bits. Rescale them to 0–65535 (or to [0, 1] as float).")
    return next(b for b in BIT_DEPTHS if largest <= (1 << b) - 1)


def build_transform(image_size: int | tuple[int, int], center_crop: Optional[int] = None, bit_depth: Optional[int] = None,
                    background: Sequence[int] = BACKGROUND) -> T.Compose:
    """`to_rgb` (by `bit_depth`, on `background`), CenterCrop(center_crop) if given, bilinear Resize to `image_size`
    (an int: square; or (height, width)), then to [-1, 1]."""
    size = (int(image_size), int(image_size)) if isinstance(image_size, (int, np.integer)) else (int(image_size[0]), int(image_size[1]))
    if bit_depth is not None:
        check_bit_depth(bit_depth)
    steps: list = [T.Lambda(functools.partial(to_rgb, bit_depth=bit_depth, background=tuple(background)))]
    if center_crop:
        steps.append(T.CenterCrop(center_crop))
    steps += [
        T.Resize(size, interpolation=T.InterpolationMode.BILINEAR),
        T.ToTensor(),
        T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ]
    return T.Compose(steps)
