"""Datasets as (raw image source) + (preprocessing); every item is `(image, index)`.

The index is the image's position in the full split, also when `skip_corrupt` drops files or
`max_images` keeps a prefix, so per-image seeds (docs/method.md §2) never shift.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from zsad.errors import CorruptImageError, DatasetNotFoundError  # noqa: F401 - re-exported

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageSource:
    """Raw images of one split: `len`, `load(i) -> PIL.Image`, `describe(i)` for messages."""

    def __len__(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def load(self, i: int) -> Image.Image:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self, i: int) -> str:
        return f"item {i}"

    def identity(self) -> str:
        """A string that changes when the underlying images change (for feature caches)."""
        return f"{type(self).__name__}:{len(self)}"


def files_identity(files: Sequence[Path], root: Optional[Path] = None) -> str:
    """A hash of (root, each file's name relative to it, size, mtime): changes when any file does."""
    h = hashlib.sha256(f"{Path(root).resolve() if root else ''}\n".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root) if root else f.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


_TIFF = (".tif", ".tiff")


def pil_loses_bits(img: Image.Image) -> bool:
    """True when PIL would decode this (lazily opened) file to 8 bits although it stores more: 16-bit RGB(A) and
    gray+alpha PNGs (PIL keeps the high byte), TIFFs of colour samples wider than 8 bits or float."""
    rawmodes = [t.args if isinstance(t.args, str) else (t.args[0] if t.args else "") for t in img.tile]
    if img.format == "PNG":
        return img.mode in ("RGB", "RGBA") and any(";16" in str(r) for r in rawmodes)
    if img.format == "TIFF" and img.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        bits = img.tag_v2.get(258, (8,)) if hasattr(img, "tag_v2") else (8,)
        fmt = img.tag_v2.get(339, 1) if hasattr(img, "tag_v2") else 1
        bits, fmt = (bits if isinstance(bits, tuple) else (bits,)), (fmt if isinstance(fmt, tuple) else (fmt,))
        return max(bits) > 8 or 3 in fmt
    return False


def _png_wide(path: Path, img: Image.Image) -> np.ndarray:
    """The samples of a 16-bit RGB(A) or gray+alpha PNG, losslessly: PIL's own decoder run with other unpackers
    of the same pixel width (the PNG filters only depend on that width): for RGB(A) once for the high and once for
    the low bytes; gray+alpha (4 bytes a pixel) as 8-bit RGBA = (L high, L low, A high, A low)."""
    rawmode = img.tile[0].args if isinstance(img.tile[0].args, str) else img.tile[0].args[0]

    def decode(unpacker: str) -> np.ndarray:
        with Image.open(path) as again:
            again.tile = [t._replace(args=unpacker if isinstance(t.args, str) else (unpacker, *t.args[1:])) for t in again.tile]
            again.load()
            return np.asarray(again).astype(np.uint16)

    if rawmode.startswith("LA;16"):
        b = decode("RGBA")
        return np.stack([(b[..., 0] << 8) | b[..., 1], (b[..., 2] << 8) | b[..., 3]], axis=-1)
    base = rawmode.split(";")[0]
    return (decode(base + ";16B") << 8) | decode(base + ";16L")


def _tiff_samples(path: Path) -> np.ndarray:
    """The first page of a TIFF as height × width × channels, read with tifffile (installed with scikit-image)."""
    try:
        import tifffile
    except ImportError as err:  # pragma: no cover - scikit-image depends on it
        raise CorruptImageError(f"{path} has more than 8 bits per colour sample and PIL reads only 8 of them; install tifffile to read it.") from err
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        arr, axes = page.asarray(), page.axes
    if "S" in axes and axes.index("S") < axes.index("Y"):  # planar: channels first
        arr = np.moveaxis(arr, axes.index("S"), -1)
    return arr[..., None] if arr.ndim == 2 else arr


def image_from_samples(samples: np.ndarray, label: str | Path = "image") -> Image.Image:
    """A PIL image of samples (height × width × 1–4 channels): a native mode where PIL has one (8-bit, "I;16", "F"),
    else an 8-bit preview carrying them (`zsad.data.transforms.SAMPLES`)."""
    from zsad.data.transforms import with_samples
    from zsad.errors import ConfigError

    if samples.ndim != 3 or samples.shape[-1] not in (1, 2, 3, 4):
        raise ConfigError(f"{label}: samples of shape {samples.shape} are not an image of 1–4 channels (gray, gray+alpha, RGB, RGBA).")
    if samples.dtype.kind == "f":
        samples = samples.astype(np.float32)
        if samples.shape[-1] == 1:
            return Image.fromarray(np.ascontiguousarray(samples[..., 0]), "F")
        preview = np.round(np.clip(np.nan_to_num(samples), 0, 1) * 255).astype(np.uint8)
    elif samples.dtype == np.uint8:
        return Image.fromarray(samples[..., 0] if samples.shape[-1] == 1 else samples, {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[samples.shape[-1]])
    elif samples.dtype.kind in "ui" and samples.dtype.itemsize <= 2:
        samples = np.clip(samples, 0, None).astype(np.uint16)  # signed: negatives are black
        if samples.shape[-1] == 1:
            return Image.fromarray(np.ascontiguousarray(samples[..., 0]))  # mode "I;16"
        preview = (samples >> 8).astype(np.uint8)
    else:
        raise ConfigError(f"{label}: {samples.dtype} samples are not supported. Save it with 8- or 16-bit integer or float samples.")
    if preview.shape[-1] == 2:  # PIL's "LA" preview as RGBA would differ in shape from the samples' channels: keep LA
        return with_samples(Image.fromarray(preview, "LA"), samples)
    return with_samples(Image.fromarray(preview, "RGB" if preview.shape[-1] == 3 else "RGBA"), samples)


def open_image(path: Path | str) -> Image.Image:
    """An image file decoded without losing bits: what PIL gives, except that 16-bit colour PNGs and TIFFs of wide or
    float colour samples (which PIL would cut to 8 bits, or not open) carry their full samples (see `to_rgb`)."""
    path = Path(path)
    try:
        img = Image.open(path)
    except Image.UnidentifiedImageError:
        if path.suffix.lower() in _TIFF:
            return image_from_samples(_tiff_samples(path), path)
        raise
    with img:
        if pil_loses_bits(img):
            if img.format == "PNG":
                samples = _png_wide(path, img)
            else:
                samples = _tiff_samples(path)
            return image_from_samples(samples, path)
        img.load()
        return img.copy() if img.mode != "P" else img.convert("RGBA")


class FileSource(ImageSource):
    """Image files on disk."""

    def __init__(self, files: Sequence[Path | str], root: Path | str | None = None):
        self.files = [Path(f) for f in files]
        self.root = Path(root) if root is not None else None

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> Image.Image:
        return open_image(self.files[i])

    def describe(self, i: int) -> str:
        return str(self.files[i])

    def identity(self) -> str:
        """Root, names, sizes and modification times: a replaced or edited file changes the identity."""
        return "files:" + files_identity(self.files, self.root)


class ArraySource(ImageSource):
    """uint8 images in memory, N×H×W×C (C = 1 or 3)."""

    def __init__(self, images: np.ndarray, label: str):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError("ArraySource needs a uint8 array of shape N×H×W×C")
        self.images = images
        self.label = label

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> Image.Image:
        arr = self.images[i]
        return Image.fromarray(arr[..., 0], "L") if arr.shape[-1] == 1 else Image.fromarray(arr, "RGB")

    def describe(self, i: int) -> str:
        return f"{self.label}[{i}]"

    def identity(self) -> str:
        return f"array:{self.label}:" + hashlib.sha256(self.images.tobytes()).hexdigest()[:16]


class TorchvisionSource(ImageSource):
    """A torchvision dataset whose items are (PIL image, target)."""

    def __init__(self, dataset, label: str, data_files: Sequence[Path] = ()):
        self.dataset = dataset
        self.label = label
        self.data_files = [Path(f) for f in data_files]

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, i: int) -> Image.Image:
        return self.dataset[i][0]

    def describe(self, i: int) -> str:
        return f"{self.label}[{i}]"

    def identity(self) -> str:
        """Name, length and the identity of the files the images are read from."""
        return f"torchvision:{self.label}:{len(self)}:" + files_identity(self.data_files)


def _readable(source: ImageSource, i: int) -> Optional[str]:
    try:
        source.load(i)
        return None
    except Exception as err:  # noqa: BLE001 - any decoder error means unreadable
        return f"{source.describe(i)} ({type(err).__name__}: {err})"


class ImageDataset(Dataset):
    """A preprocessed split. Items: (float32 [3, S, S] in [-1, 1], int index)."""

    def __init__(
        self,
        name: str,
        split: str,
        source: ImageSource,
        transform: Callable[[Image.Image], torch.Tensor],
        spec: dict,
        max_images: Optional[int] = None,
        skip_corrupt: bool = False,
    ):
        self.name, self.split, self.source, self.transform = name, split, source, transform
        self.spec = dict(spec)
        self.notes: list[str] = []  # what a user should know about how the split was made
        n = len(source) if max_images is None else min(max_images, len(source))
        self.indices = list(range(n))
        self.skipped: list[str] = []
        if skip_corrupt:
            with ThreadPoolExecutor(max_workers=8) as pool:
                problems = list(pool.map(lambda i: _readable(source, i), self.indices))
            self.skipped = [p for p in problems if p is not None]
            self.indices = [i for i, p in zip(self.indices, problems) if p is None]
            if self.skipped:
                warnings.warn(
                    f"{name}/{split}: skipped {len(self.skipped)} unreadable image(s) of {n}; "
                    f"first: {self.skipped[0]}",
                    stacklevel=2,
                )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        index = self.indices[position]
        try:
            img = self.source.load(index)
        except Exception as err:  # noqa: BLE001
            raise CorruptImageError(
                f"Cannot read image {self.source.describe(index)} of dataset '{self.name}' ({self.split}): "
                f"{type(err).__name__}: {err}. Replace or delete the file, or set data.skip_corrupt=true "
                "to skip unreadable images."
            ) from err
        return self.transform(img), index

    def fingerprint(self) -> str:
        """Identity of the preprocessed split (for feature caches)."""
        payload = {
            "name": self.name,
            "split": self.split,
            "spec": self.spec,
            "source": self.source.identity(),
            "indices": hashlib.sha256(np.asarray(self.indices, dtype=np.int64).tobytes()).hexdigest()[:16],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
