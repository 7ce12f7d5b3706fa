"""What a user hands `zsad fit`, `zsad score` or the Python API, as named image sources.

Accepted: a folder (searched recursively, in the folder's own sorted order), a list of image paths, PIL
images, numpy arrays H×W×C uint8 or uint16 (or N×H×W×C), and torch tensors N×C×H×W float in [0, 1] (quantised to
8 bit, as any image file would be). Anything else is a clear error. Every image gets a stable name: its path
relative to the folder, or `image_00042` for in-memory images; the fit/calibration split hashes these names.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from zsad.data.base import IMAGE_EXTENSIONS, FileSource, ImageSource, image_from_samples
from zsad.data.transforms import SAMPLES
from zsad.errors import ConfigError, DatasetNotFoundError


class PILSource(ImageSource):
    """Images held in memory as PIL images (any sizes and modes)."""

    def __init__(self, images: Sequence[Image.Image], names: Sequence[str]):
        self.images, self.names = list(images), list(names)

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> Image.Image:
        return self.images[i]

    def describe(self, i: int) -> str:
        return self.names[i]

    def identity(self) -> str:
        h = hashlib.sha256()
        for img in self.images:
            h.update(f"{img.mode}{img.size}".encode())
            h.update(img.tobytes())
            if SAMPLES in img.info:  # 16-bit colour: the PIL bytes are only its 8-bit preview
                h.update(np.ascontiguousarray(img.info[SAMPLES]).tobytes())
        return "pil:" + h.hexdigest()[:32]


@dataclass
class Images:
    """A named image source: `source.load(i)` is image i, `names[i]` its stable name."""

    source: ImageSource
    names: list[str]
    root: Path | None = None  # the folder, when the images are files under one
    label: str = "images"  # for messages and default output folders

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, positions: Sequence[int]) -> Images:
        """The images at `positions`, in that order."""
        if isinstance(self.source, FileSource):
            files = [self.source.files[i] for i in positions]
            return Images(FileSource(files, root=self.source.root), [self.names[i] for i in positions], self.root, self.label)
        return Images(PILSource([self.source.load(i) for i in positions], [self.names[i] for i in positions]),
                      [self.names[i] for i in positions], None, self.label)


def _folder(root: Path) -> Images:
    if not root.is_dir():
        raise DatasetNotFoundError(f"'{root}' is not a folder of images. Pass a folder, a list of image files, or images in memory.")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DatasetNotFoundError(f"'{root}' holds no images ({', '.join(IMAGE_EXTENSIONS)}), also not in its sub-folders. Point at a folder of images.")
    return Images(FileSource(files, root=root), [f.relative_to(root).as_posix() for f in files], root, root.resolve().name)


def _paths(paths: Sequence[str | Path]) -> Images:
    files = [Path(p) for p in paths]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise DatasetNotFoundError(f"{len(missing)} of the {len(files)} image paths do not exist, e.g. {missing[:3]}. Check the list.")
    names = [p.as_posix() for p in files]
    if len(set(names)) != len(names):
        raise ConfigError("The list names some image files more than once; each image may appear once.")
    return Images(FileSource(files), names, None, "images")


def _array_images(arr: np.ndarray) -> list[Image.Image]:
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4) or arr.dtype not in (np.uint8, np.uint16):
        raise ConfigError(f"numpy images must be uint8 or uint16 H×W×C or N×H×W×C with C = 1, 3 or 4; got {arr.dtype} of shape {arr.shape}.")
    if arr.dtype == np.uint16:  # camera data: kept at full precision, converted by the run's bit depth
        return [image_from_samples(np.ascontiguousarray(a), f"array image {i}") for i, a in enumerate(arr)]
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[arr.shape[-1]]
    return [Image.fromarray(a[..., 0] if mode == "L" else a, mode) for a in arr]


def _tensor_images(t: Any) -> list[Image.Image]:
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[1] not in (1, 3) or not t.is_floating_point():
        raise ConfigError(f"torch images must be float N×C×H×W (C = 1 or 3) with values in [0, 1]; got {t.dtype} of shape {tuple(t.shape)}.")
    lo, hi = float(t.min()), float(t.max())
    if lo < 0 or hi > 1:
        raise ConfigError(f"torch images must have values in [0, 1]; these run from {lo:.3g} to {hi:.3g}. Scale them first (e.g. (x + 1) / 2 for [-1, 1]).")
    arr = (t.detach().cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return _array_images(arr)


def as_images(inputs: Any) -> Images:
    """Any accepted input as named images (see the module docstring); an empty input is an error."""
    if isinstance(inputs, Images):
        return inputs
    if isinstance(inputs, (str, Path)):
        return _folder(Path(inputs))
    if isinstance(inputs, np.ndarray):
        images = _array_images(inputs)
    elif type(inputs).__module__.startswith("torch") and hasattr(inputs, "ndim"):
        images = _tensor_images(inputs)
    elif isinstance(inputs, Image.Image):
        images = [inputs]
    elif isinstance(inputs, (list, tuple)):
        if not inputs:
            raise DatasetNotFoundError("No images given (an empty list). Pass a folder, image paths or images.")
        if all(isinstance(x, (str, Path)) for x in inputs):
            return _paths(inputs)
        if all(isinstance(x, Image.Image) for x in inputs):
            images = list(inputs)
        elif all(isinstance(x, np.ndarray) for x in inputs):
            images = [img for x in inputs for img in _array_images(x)]
        else:
            kinds = sorted({type(x).__name__ for x in inputs})
            raise ConfigError(f"A list of images must hold only paths, only PIL images or only numpy arrays; this one holds {', '.join(kinds)}.")
    else:
        raise ConfigError(f"Cannot read images from a {type(inputs).__name__}. Pass a folder, a list of paths, PIL images, "
                          "numpy arrays (H×W×C uint8) or a tensor (N×C×H×W float in [0, 1]).")
    if not images:
        raise DatasetNotFoundError("No images given. Pass a folder, image paths or images.")
    names = [f"image_{i:05d}" for i in range(len(images))]
    return Images(PILSource(images, names), names, None, "images")


def bit_depth_of(images: Images, override: int | None = None) -> int:
    """The run's bit depth (`zsad.data.transforms.decide_bit_depth`) from these images, typically the fit part; image
    files whose header shows 8-bit samples are not decoded."""
    from zsad.data.transforms import decide_bit_depth

    if override is not None:
        return decide_bit_depth([], override)
    if isinstance(images.source, FileSource):
        return decide_bit_depth(images.source.files)
    return decide_bit_depth(images.source.load(i) for i in range(len(images)))


def image_size(image: Image.Image | str | Path) -> tuple[int, int]:
    """(height, width) of a PIL image or an image file; a file's header only, where PIL can read it."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    path = Path(image)
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except Image.UnidentifiedImageError:
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise
    import tifffile  # float colour TIFFs, which PIL cannot open

    with tifffile.TiffFile(path) as tif:
        return int(tif.pages[0].imagelength), int(tif.pages[0].imagewidth)


def small_image_note(names: Sequence[str], sizes: Sequence[tuple[int, int]], working_size: int | tuple[int, int], tile: int,
                     examples: int = 3) -> str | None:
    """A note on the images (names, (height, width) sizes) smaller than one `tile` in either side, which are upsampled
    to the working size (an int: square; or (height, width)); None when there are none."""
    target = (working_size, working_size) if isinstance(working_size, (int, np.integer)) else tuple(working_size)
    tiny = [(n, s) for n, s in zip(names, sizes) if min(s) < tile]
    if not tiny:
        return None
    factor = max(max(target[0] / h, target[1] / w) for _, (h, w) in tiny)
    shown = ", ".join(f"{n} ({h}×{w})" for n, (h, w) in tiny[:examples]) + (", …" if len(tiny) > examples else "")
    return (f"{len(tiny)} of {len(sizes)} images are smaller than one tile ({tile} px): they are upsampled to the working size "
            f"{target[0]}×{target[1]} px (up to {factor:.1f}×), which adds no detail: {shown}.")
