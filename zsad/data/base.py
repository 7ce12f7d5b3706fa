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


class FileSource(ImageSource):
    """Image files on disk."""

    def __init__(self, files: Sequence[Path | str], root: Path | str | None = None):
        self.files = [Path(f) for f in files]
        self.root = Path(root) if root is not None else None

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> Image.Image:
        with Image.open(self.files[i]) as img:
            img.load()
            return img.copy() if img.mode != "P" else img.convert("RGBA")

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
