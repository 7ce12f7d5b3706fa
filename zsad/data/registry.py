"""Dataset registry: `build_dataset(cfg)` for every name in `DATASETS`."""

from __future__ import annotations

import csv
import difflib
from pathlib import Path
from typing import Callable

from zsad.data.base import (
    IMAGE_EXTENSIONS,
    ArraySource,
    DatasetNotFoundError,
    FileSource,
    ImageDataset,
    ImageSource,
    TorchvisionSource,
)
from zsad.data.builtin import BUILTIN_NAMES, make_builtin
from zsad.errors import ConfigError, UnknownNameError
from zsad.data.transforms import CELEBA_CROP, build_transform

CELEBA_SPLITS = {"train": "0", "valid": "1", "test": "2"}


def _celeba_files(root: Path, split: str, download: bool) -> tuple[list[Path], Path]:
    """CelebA aligned images in torchvision's layout (root/celeba/...) or Kaggle's (csv + nested folder)."""
    if download:
        import torchvision

        torchvision.datasets.CelebA(str(root), split="all", target_type=[], download=True)
    searched = []
    for base in (root, root / "celeba"):
        for part_name in ("list_eval_partition.txt", "list_eval_partition.csv"):
            part = base / part_name
            searched.append(str(part))
            if not part.is_file():
                continue
            for img_dir in (base / "img_align_celeba" / "img_align_celeba", base / "img_align_celeba"):
                if img_dir.is_dir() and any(img_dir.glob("*.jpg")):
                    break
            else:
                raise DatasetNotFoundError(
                    f"CelebA: found {part} but no img_align_celeba/*.jpg beside it. Extract "
                    f"img_align_celeba.zip into {base}."
                )
            rows = _read_partition(part)
            if split == "all":
                names = [name for name, _ in rows]
            elif split in CELEBA_SPLITS:
                names = [name for name, p in rows if p == CELEBA_SPLITS[split]]
            else:
                raise ConfigError(f"CelebA split must be one of train, valid, test, all; got '{split}'.")
            return [img_dir / n for n in names], img_dir
    raise DatasetNotFoundError(
        f"CelebA not found under '{root}' (looked for {', '.join(searched)}). Either set "
        "data.download=true (torchvision's downloader, Google Drive), or download the Kaggle "
        "'celeba-dataset' archive and extract it so that <root>/img_align_celeba/ and "
        "<root>/list_eval_partition.csv exist, then pass data.root=<root>."
    )


def _read_partition(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="") as f:
        if path.suffix == ".csv":
            reader = csv.reader(f)
            header = next(reader)
            if header and header[0].endswith(".jpg"):  # no header line
                return [(header[0], header[1])] + [(r[0], r[1].strip()) for r in reader if r]
            return [(r[0], r[1].strip()) for r in reader if r]
        return [tuple(line.split()[:2]) for line in f if line.strip()]  # type: ignore[misc]


def _torchvision(kind: str, root: Path, split: str, download: bool) -> ImageSource:
    import torchvision.datasets as tvd

    where = {"cifar10": root, "cifar100": root, "svhn": root / "svhn", "textures": root}[kind]
    try:
        if kind == "cifar10":
            ds = tvd.CIFAR10(str(where), train=split == "train", download=download)
        elif kind == "cifar100":
            ds = tvd.CIFAR100(str(where), train=split == "train", download=download)
        elif kind == "svhn":
            ds = tvd.SVHN(str(where), split=split, download=download)
        else:
            ds = tvd.DTD(str(where), split=split, partition=1, download=download)
            return FileSource(ds._image_files, root=where)
    except RuntimeError as err:
        expected = {
            "cifar10": "cifar-10-batches-py/",
            "cifar100": "cifar-100-python/",
            "svhn": "svhn/{train,test}_32x32.mat",
            "textures": "dtd/dtd/images/ and dtd/dtd/labels/",
        }[kind]
        raise DatasetNotFoundError(
            f"{kind} ({split}) not found under '{root}' (expected {expected} there; torchvision said: {err}). "
            f"Set data.download=true to fetch it with torchvision, or point data.root at the folder that holds it."
        ) from None
    return TorchvisionSource(ds, f"{kind}/{split}")


def _imagefolder_files(root: Path, split: str) -> list[Path]:
    base = root / split if (root / split).is_dir() else root
    if not base.is_dir():
        raise DatasetNotFoundError(f"imagefolder: '{base}' is not a folder. Set data.root to a folder of images.")
    files = sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DatasetNotFoundError(
            f"imagefolder: no images ({', '.join(IMAGE_EXTENSIONS)}) under '{base}'. Set data.root to a folder of images."
        )
    return files


def _build(cfg, source: ImageSource, center_crop: int | None = None) -> ImageDataset:
    spec = {"image_size": int(cfg.image_size), "center_crop": center_crop, "options": dict(cfg.options or {})}
    return ImageDataset(
        cfg.name,
        cfg.split,
        source,
        build_transform(int(cfg.image_size), center_crop),
        spec,
        max_images=cfg.max_images,
        skip_corrupt=bool(cfg.skip_corrupt),
    )


def _celeba(cfg) -> ImageDataset:
    files, img_dir = _celeba_files(Path(cfg.root), cfg.split, bool(cfg.download))
    return _build(cfg, FileSource(files, root=img_dir), center_crop=CELEBA_CROP)


def _tv(kind: str) -> Callable:
    return lambda cfg: _build(cfg, _torchvision(kind, Path(cfg.root), cfg.split, bool(cfg.download)))


def _imagefolder(cfg) -> ImageDataset:
    root = Path(cfg.root)
    return _build(cfg, FileSource(_imagefolder_files(root, cfg.split), root=root))


def _builtin(name: str) -> Callable:
    def build(cfg) -> ImageDataset:
        opts = dict(cfg.options or {})
        unknown = set(opts) - {"count", "seed"}
        if unknown:
            raise ConfigError(f"Built-in set '{name}' takes data.options count and seed, not {sorted(unknown)}.")
        images = make_builtin(name, cfg.split, opts.get("count"), int(opts.get("seed", 0)))
        return _build(cfg, ArraySource(images, f"{name}/{cfg.split}"))

    return build


DATASETS: dict[str, Callable] = {
    "celeba": _celeba,
    "cifar10": _tv("cifar10"),
    "cifar100": _tv("cifar100"),
    "svhn": _tv("svhn"),
    "textures": _tv("textures"),
    "imagefolder": _imagefolder,
    **{name: _builtin(name) for name in BUILTIN_NAMES},
}


def build_dataset(cfg) -> ImageDataset:
    """The preprocessed split described by a DataConfig (or any object with the same fields)."""
    if cfg.name not in DATASETS:
        near = difflib.get_close_matches(cfg.name, DATASETS, n=3)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise UnknownNameError(f"Unknown dataset '{cfg.name}'.{hint} Known datasets: {', '.join(DATASETS)}.")
    return DATASETS[cfg.name](cfg)
