"""Dataset registry: `build_dataset(cfg)` for every name in `DATASETS`."""

from __future__ import annotations

import csv
import difflib
import hashlib
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
from zsad.data.transforms import CELEBA_CROP, build_transform
from zsad.errors import ConfigError, UnknownNameError

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


TORCHVISION_SPLITS = {"cifar10": ("train", "test"), "cifar100": ("train", "test"), "svhn": ("train", "test", "extra"), "textures": ("train", "val", "test")}


def _torchvision(kind: str, root: Path, split: str, download: bool) -> ImageSource:
    import torchvision.datasets as tvd

    if split not in TORCHVISION_SPLITS[kind]:
        raise ConfigError(f"{kind}: unknown split '{split}'. Valid splits: {', '.join(TORCHVISION_SPLITS[kind])}.")

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
    return TorchvisionSource(ds, f"{kind}/{split}", data_files=_torchvision_files(kind, ds))


def _torchvision_files(kind: str, ds) -> list[Path]:
    """The files a torchvision set reads its images from (their sizes and mtimes key feature caches)."""
    if kind in ("cifar10", "cifar100"):
        base = Path(ds.root) / ds.base_folder
        return [base / name for name, _ in (ds.train_list if ds.train else ds.test_list)]
    return [Path(ds.root) / ds.filename]  # svhn


SPLIT_FOLDERS = ("train", "test", "val", "valid", "validation")


def _hash_fraction(name: str) -> float:
    """A uniform number in [0, 1) from a file's relative path: the same file always falls on the same side."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") / 2.0**64


def _imagefolder_files(root: Path, split: str, fit_fraction: float = 0.5) -> tuple[list[Path], list[str]]:
    """(files of `split`, notes for the user). `<root>/<split>/` when it exists; `all` = every image under
    root; a flat folder (no split folders) is split by a hash of each relative path: `train` gets
    `fit_fraction` of the files, `test` the rest, so ID-fit and ID-test never share an image file."""
    if not root.is_dir():
        raise DatasetNotFoundError(f"imagefolder: '{root}' is not a folder. Set data.root to a folder of images.")
    present = [d for d in SPLIT_FOLDERS if (root / d).is_dir()]
    if split != "all" and present and split not in present:
        raise ConfigError(f"imagefolder: '{root}' has no '{split}/' folder. Valid splits here: {', '.join([*present, 'all'])}.")
    if split != "all" and not present and split not in ("train", "test"):
        raise ConfigError(f"imagefolder: unknown split '{split}' for the flat folder '{root}' (split by file name). Valid splits: train, test, all.")
    base = root / split if split in present else root
    files = sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DatasetNotFoundError(
            f"imagefolder: no images ({', '.join(IMAGE_EXTENSIONS)}) under '{base}'. Set data.root to a folder of images."
        )
    if split == "all" or present:
        return files, []
    if not 0 < fit_fraction < 1:
        raise ConfigError(f"imagefolder: data.options.fit_fraction must be in (0, 1); got {fit_fraction}.")
    fit = [f for f in files if _hash_fraction(f.relative_to(root).as_posix()) < fit_fraction]
    test = [f for f in files if _hash_fraction(f.relative_to(root).as_posix()) >= fit_fraction]
    chosen = fit if split == "train" else test
    if not chosen:
        raise DatasetNotFoundError(f"imagefolder: the {split} part of the flat folder '{root}' is empty ({len(files)} images split by hashed file "
                                   f"name). Add images, or put them in {root}/train/ and {root}/test/.")
    note = (f"'{root}' has no train/ or test/ folder: split by hashed file name into {len(fit)} fit (train) and "
            f"{len(test)} test images (data.options.fit_fraction={fit_fraction:g}).")
    return chosen, [note]


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
    opts = dict(cfg.options or {})  # other keys (e.g. a built-in set's `count` left by an override) are ignored
    files, notes = _imagefolder_files(root, cfg.split, float(opts.get("fit_fraction", 0.5)))
    dataset = _build(cfg, FileSource(files, root=root))
    dataset.notes += notes
    return dataset


def folder_dataset(root: str | Path, image_size: int, center_crop: int | None = None) -> ImageDataset:
    """Every image under `root` (recursively), preprocessed as a benchmark set was: optional CenterCrop,
    then Resize (what `zsad score` reads)."""
    files, _ = _imagefolder_files(Path(root), "all")
    spec = {"image_size": int(image_size), "center_crop": center_crop, "options": {}}
    return ImageDataset("imagefolder", "all", FileSource(files, root=Path(root)), build_transform(int(image_size), center_crop), spec)


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


def build_training_dataset(cfg) -> ImageDataset:
    """`build_dataset` for training the base model: a flat image folder gives all its images (the
    fit/test halves of a flat folder are an evaluation notion)."""
    if cfg.name == "imagefolder" and Path(cfg.root).is_dir() and not any((Path(cfg.root) / d).is_dir() for d in SPLIT_FOLDERS):
        cfg = cfg.copy()
        cfg.split = "all"
    return build_dataset(cfg)


def build_dataset(cfg) -> ImageDataset:
    """The preprocessed split described by a DataConfig (or any object with the same fields)."""
    if cfg.name not in DATASETS:
        near = difflib.get_close_matches(cfg.name, DATASETS, n=3)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise UnknownNameError(f"Unknown dataset '{cfg.name}'.{hint} Known datasets: {', '.join(DATASETS)}.")
    return DATASETS[cfg.name](cfg)
