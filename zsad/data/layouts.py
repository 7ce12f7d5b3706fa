"""Labelled anomaly-detection sets read from disk: normal images to fit on, and test images with a label
(0 normal, 1 defect) and, where the set has them, a ground-truth mask per defect image.

Layouts (`LAYOUTS`, selected by `parse_data_spec`):
* `mvtec`: MVTec AD's tree, `<root>/<category>/{train/good, test/good, test/<defect>, ground_truth/<defect>}`,
  mask of `test/<defect>/000.png` = `ground_truth/<defect>/000_mask.png`.
* `folder`: anomalib's `Folder` semantics: a folder of normal images, one of abnormal images, optionally one
  of masks (matched to abnormal images by file stem) and one of normal test images. Without the latter a
  hashed share of the normal folder is held out as normal test images (used neither to fit nor to calibrate).

* `visa`: VisA as it ships, `<root>/split_csv/1cls.csv` (columns object, split, label, image, mask; paths relative to
  `<root>`) over `<root>/<category>/Data/{Images/Normal, Images/Anomaly, Masks/Anomaly}`: the split anomalib's `Visa`
  applies when it writes `visa_pytorch/`, read in place.

A new layout is one reader plus one `LAYOUTS` entry.
Masks are binarised on reading: any value > 0 is a defect pixel (MVTec's masks are 0/255).
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

from zsad.data.base import IMAGE_EXTENSIONS
from zsad.errors import ConfigError, DataLeakageError, DatasetNotFoundError, UnknownNameError

MVTEC_EXPECTED = "<root>/<category>/train/good/, <root>/<category>/test/<good|defect>/ and (for masks) <root>/<category>/ground_truth/<defect>/"
MASK_SUFFIXES = ("_mask", "")  # MVTec names masks 000_mask.png; many custom sets reuse the image's name


@dataclass(frozen=True)
class LabelledItem:
    """One test image: its file, label (0 normal, 1 defect), mask file, defect type and report name."""

    path: Path
    label: int
    mask: Optional[Path]
    defect: str
    name: str


@dataclass
class LabelledSet:
    """One category: normal images to fit (and calibrate) on, and labelled test items."""

    category: str
    train: list[Path]
    test: list[LabelledItem]
    has_masks: bool
    notes: list[str] = field(default_factory=list)


def _hash_fraction(name: str) -> float:
    """A uniform number in [0, 1) from a relative path (the same as `registry._hash_fraction`; repeated here
    so that the registry can import this module without an import cycle)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") / 2.0**64


def _images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in `folder`, sorted; names starting with '.' (e.g. macOS '._000.png' forks) are skipped."""
    if not folder.is_dir():
        return []
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())


def _find_mask(folder: Path, stem: str) -> Optional[Path]:
    """`<stem>_mask.<ext>` or `<stem>.<ext>` in `folder` (png first), or None."""
    for suffix in MASK_SUFFIXES:
        for ext in (".png", *IMAGE_EXTENSIONS):
            candidate = folder / f"{stem}{suffix}{ext}"
            if candidate.is_file():
                return candidate
    return None


def _expected_masks(folder: Path, stem: str) -> str:
    return " or ".join(str(folder / f"{stem}{suffix}.png") for suffix in MASK_SUFFIXES)


def _missing_mask_error(missing: list[tuple[Path, str]], how: str) -> DatasetNotFoundError:
    first = "; ".join(f"{img} (expected {expected})" for img, expected in missing[:3])
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return DatasetNotFoundError(f"{len(missing)} defect image(s) have no ground-truth mask: {first}{more}. {how}")


# ---------------------------------------------------------------------------------------------- MVTec AD


def _is_mvtec_category(folder: Path) -> bool:
    return (folder / "train").is_dir() and (folder / "test").is_dir()


def _mvtec_categories(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and _is_mvtec_category(d))


def _category_problem(folder: Path) -> Optional[str]:
    """Why `folder` is not a usable MVTec category (None when it is)."""
    if not _images(folder / "train" / "good"):
        return f"no images in {folder / 'train' / 'good'}"
    if not any(_images(d) for d in (folder / "test").iterdir() if d.is_dir()):
        return f"no images in {folder / 'test'}/<good|defect>/"
    return None


def _read_mvtec_category(folder: Path, valid: list[str]) -> LabelledSet:
    problem = _category_problem(folder)
    if problem:
        listing = ", ".join(valid) if valid else "none"
        raise DatasetNotFoundError(
            f"MVTec category '{folder.name}' is empty: {problem}. Valid categories under '{folder.parent}': {listing}. "
            "Re-extract the category's archive, or choose a valid category."
        )
    train = _images(folder / "train" / "good")
    gt = folder / "ground_truth"
    has_masks = gt.is_dir()
    notes = [] if has_masks else [f"{folder.name}: no ground_truth/ folder, so no masks: image-level metrics only."]
    test: list[LabelledItem] = []
    missing: list[tuple[Path, str]] = []
    for defect_dir in sorted(d for d in (folder / "test").iterdir() if d.is_dir()):
        defect = defect_dir.name
        label = 0 if defect == "good" else 1
        for img in _images(defect_dir):
            mask = None
            if label and has_masks:
                mask = _find_mask(gt / defect, img.stem)
                if mask is None:
                    missing.append((img, _expected_masks(gt / defect, img.stem)))
            test.append(LabelledItem(img, label, mask, defect, img.relative_to(folder).as_posix()))
    if missing:
        raise _missing_mask_error(missing, "Restore the mask files, or delete the ground_truth/ folder to evaluate image-level metrics only.")
    labels = {item.label for item in test}
    if labels != {0, 1}:
        notes.append(f"{folder.name}: test/ has only {'normal' if labels == {0} else 'defect'} images; AUROC needs both.")
    labelled = LabelledSet(folder.name, train, test, has_masks, notes)
    _note_mask_sizes(labelled)
    return labelled


def read_mvtec(root: Path | str, category: Optional[str] = None) -> list[LabelledSet]:
    """MVTec AD's sets under `root` (one category, or every category; `root` may be a category folder)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"MVTec AD: '{root}' is not a folder. Point it at the extracted dataset (expected {MVTEC_EXPECTED}).")
    if _is_mvtec_category(root):
        if category not in (None, root.name):
            raise ConfigError(f"MVTec AD: '{root}' is itself the category '{root.name}', but category '{category}' was asked for. "
                              f"Point the root at the folder above it to choose another category.")
        return [_read_mvtec_category(root, [] if _category_problem(root) else [root.name])]
    folders = _mvtec_categories(root)
    if not folders:
        found = sorted(d.name + "/" for d in root.iterdir() if d.is_dir())
        raise DatasetNotFoundError(
            f"MVTec AD: '{root}' does not have the MVTec layout: expected {MVTEC_EXPECTED} (or a category folder with train/ and "
            f"test/). Found: {', '.join(found[:12]) or 'no sub-folders'}. Point the root at the folder that holds the categories."
        )
    valid = [f.name for f in folders if _category_problem(f) is None]
    if category is not None:
        names = [f.name for f in folders]
        if category not in names:
            near = difflib.get_close_matches(category, names, n=3)
            hint = f" Did you mean {', '.join(near)}?" if near else ""
            raise UnknownNameError(f"MVTec AD: no category '{category}' under '{root}'.{hint} Valid categories: {', '.join(valid) or 'none'}.")
        folders = [root / category]
    return [_read_mvtec_category(f, valid) for f in folders]


# ---------------------------------------------------------------------------------------------- Folder


def read_folder(
    normal_dir: Path | str,
    abnormal_dir: Path | str,
    mask_dir: Path | str | None = None,
    normal_test_dir: Path | str | None = None,
    test_fraction: float = 0.2,
    category: Optional[str] = None,
) -> LabelledSet:
    """anomalib-`Folder`-style set: normal images to fit on, abnormal test images (masks matched by stem),
    normal test images from `normal_test_dir` or, without it, a hashed `test_fraction` of `normal_dir`."""
    normal_dir, abnormal_dir = Path(normal_dir).expanduser(), Path(abnormal_dir).expanduser()
    mask_dir = Path(mask_dir).expanduser() if mask_dir is not None else None
    for role, d in (("normal_dir", normal_dir), ("abnormal_dir", abnormal_dir), ("mask_dir", mask_dir), ("normal_test_dir", normal_test_dir)):
        if d is not None and not Path(d).expanduser().is_dir():
            raise DatasetNotFoundError(f"folder layout: {role} '{d}' is not a folder. Pass an existing folder of images.")
    if category is None:
        category = Path(os.path.commonpath([normal_dir.resolve(), abnormal_dir.resolve()])).name or "folder"
    normal = _images(normal_dir, recursive=True)
    abnormal = _images(abnormal_dir, recursive=True)
    for role, d, files in (("normal_dir", normal_dir, normal), ("abnormal_dir", abnormal_dir, abnormal)):
        if not files:
            raise DatasetNotFoundError(f"folder layout: no images ({', '.join(IMAGE_EXTENSIONS)}) under {role} '{d}'. Add images or fix the path.")
    notes: list[str] = []
    if normal_test_dir is not None:
        normal_test_dir = Path(normal_test_dir).expanduser()
        train, held = normal, _images(normal_test_dir, recursive=True)
        held_base, held_role = normal_test_dir, "normal_test"
        if not held:
            raise DatasetNotFoundError(f"folder layout: no images under normal_test_dir '{normal_test_dir}'. Add images or leave it out.")
    else:
        if not 0 < test_fraction < 1:
            raise ConfigError(f"folder layout: test_fraction must be in (0, 1); got {test_fraction}.")
        side = {f: _hash_fraction(f.relative_to(normal_dir).as_posix()) < test_fraction for f in normal}
        train, held = [f for f in normal if not side[f]], [f for f in normal if side[f]]
        held_base, held_role = normal_dir, "normal"
        if not train or not held:
            raise DatasetNotFoundError(
                f"folder layout: holding out test_fraction={test_fraction:g} of the {len(normal)} images in '{normal_dir}' (by hashed file "
                f"name) leaves {len(train)} to fit and {len(held)} to test. Add normal images, change test_fraction, or pass normal_test_dir."
            )
        notes.append(f"{category}: no normal_test_dir, so {len(held)} of the {len(normal)} normal images (test_fraction={test_fraction:g}, chosen "
                     "by hashed file name) are held out as normal test images; they are used neither to fit nor to calibrate.")
    shared = {f.resolve() for f in train} & ({f.resolve() for f in held} | {f.resolve() for f in abnormal})
    if shared:
        raise DataLeakageError(f"folder layout: {len(shared)} image(s) are both fit and test images, e.g. '{sorted(shared)[0]}'. "
                               "Use separate folders for normal, abnormal and normal test images.")
    test = [LabelledItem(f, 0, None, "good", f"{held_role}/{f.relative_to(held_base).as_posix()}") for f in held]
    missing: list[tuple[Path, str]] = []
    for f in abnormal:
        rel = f.relative_to(abnormal_dir)
        defect = rel.parts[0] if len(rel.parts) > 1 else abnormal_dir.name  # sub-folders name the defect type
        mask = None
        if mask_dir is not None:
            mask = _find_mask(mask_dir / rel.parent, f.stem) or _find_mask(mask_dir, f.stem)
            if mask is None:
                missing.append((f, _expected_masks(mask_dir / rel.parent, f.stem)))
        test.append(LabelledItem(f, 1, mask, defect, f"abnormal/{rel.as_posix()}"))
    if missing:
        raise _missing_mask_error(missing, "Add the masks (the image's stem, optionally with '_mask'), or leave mask_dir out for image-level metrics only.")
    if mask_dir is None:
        notes.append(f"{category}: no mask_dir, so no masks: image-level metrics only.")
    labelled = LabelledSet(category, train, test, mask_dir is not None, notes)
    _note_mask_sizes(labelled)
    return labelled


# ---------------------------------------------------------------------------------------------- VisA

VISA_SPLIT = Path("split_csv") / "1cls.csv"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
VISA_EXPECTED = "<root>/split_csv/1cls.csv and <root>/<category>/Data/Images/{Normal,Anomaly}/ (+ Data/Masks/Anomaly/)"


def _visa_rows(root: Path) -> list[dict]:
    csv_path = root / VISA_SPLIT
    if not csv_path.is_file():
        raise DatasetNotFoundError(f"VisA: no split file '{csv_path}' (expected {VISA_EXPECTED}). Point the root at the extracted VisA folder, "
                                   "the one that holds split_csv/ and the category folders.")
    with csv_path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark from a spreadsheet save
        reader = csv.DictReader(f)
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        missing = [c for c in VISA_COLUMNS if c not in reader.fieldnames]
        if missing:
            raise DatasetNotFoundError(f"VisA: '{csv_path}' lacks the column(s) {', '.join(missing)}; VisA's split file has "
                                       f"{', '.join(VISA_COLUMNS)}. Restore split_csv/1cls.csv from the VisA archive.")
        # paths as written on Windows work too; rows without an object (blank lines, trailing commas) are not images
        rows = [{k: (row[k] or "").strip().replace("\\", "/") for k in VISA_COLUMNS} for row in reader]
        return [row for row in rows if row["object"]]


def _read_visa_category(root: Path, category: str, rows: list[dict]) -> LabelledSet:
    train: list[Path] = []
    test: list[LabelledItem] = []
    absent: list[str] = []
    missing_masks: list[tuple[Path, str]] = []
    for row in rows:
        path, anomalous = root / row["image"], row["label"] == "anomaly"
        if row["label"] not in ("normal", "anomaly") or row["split"] not in ("train", "test"):
            raise DatasetNotFoundError(f"VisA: '{root / VISA_SPLIT}' has split '{row['split']}', label '{row['label']}' for {row['image']}; "
                                       "VisA's are train/test and normal/anomaly. Restore the split file from the VisA archive.")
        if not path.is_file():
            absent.append(row["image"])
            continue
        name = path.relative_to(root / category).as_posix() if path.is_relative_to(root / category) else row["image"]
        if row["split"] == "train":
            if anomalous:
                raise DataLeakageError(f"VisA: the split file lists the anomalous image {row['image']} for training. "
                                       "Fit images must be normal: restore split_csv/1cls.csv from the VisA archive.")
            train.append(path)
            continue
        mask = root / row["mask"] if anomalous and row["mask"] else None
        if anomalous and (mask is None or not mask.is_file()):
            missing_masks.append((path, str(mask) if mask else "a mask path in the split file's mask column"))
            continue
        test.append(LabelledItem(path, int(anomalous), mask, "bad" if anomalous else "good", name))
    if absent:
        more = f" and {len(absent) - 3} more" if len(absent) > 3 else ""
        raise DatasetNotFoundError(f"VisA '{category}': {len(absent)} image(s) the split file lists are not on disk under '{root}': "
                                   f"{', '.join(absent[:3])}{more}. Re-extract the category's folder from the VisA archive.")
    if missing_masks:
        raise _missing_mask_error(missing_masks, "Re-extract the category's Data/Masks/Anomaly/ folder from the VisA archive.")
    if not train:
        raise DatasetNotFoundError(f"VisA '{category}': the split file lists no training images for it. Restore split_csv/1cls.csv.")
    shared = sorted(set(train) & {item.path for item in test})
    if shared:
        raise DataLeakageError(f"VisA '{category}': {len(shared)} image(s) are listed for both training and test, e.g. '{shared[0]}'. "
                               "Restore split_csv/1cls.csv from the VisA archive.")
    labelled = LabelledSet(category, sorted(train), sorted(test, key=lambda i: i.name), any(i.mask is not None for i in test), [])
    labels = {item.label for item in test}
    if labels != {0, 1}:
        what = "no images" if not labels else f"only {'normal' if labels == {0} else 'anomalous'} images"
        labelled.notes.append(f"{category}: the test split has {what}; AUROC needs both.")
    _note_mask_sizes(labelled)
    return labelled


def read_visa(root: Path | str, category: Optional[str] = None) -> list[LabelledSet]:
    """VisA's sets under `root` as its split file (split_csv/1cls.csv) divides them: one category, or every category
    the file names. Anomalous test images are the defect type "bad" (VisA names no types), as in anomalib."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"VisA: '{root}' is not a folder. Point it at the extracted dataset (expected {VISA_EXPECTED}).")
    by_category: dict[str, list[dict]] = {}
    for row in _visa_rows(root):
        by_category.setdefault(row["object"], []).append(row)
    if category is not None and category not in by_category:
        near = difflib.get_close_matches(category, list(by_category), n=3)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise UnknownNameError(f"VisA: the split file names no category '{category}'.{hint} Categories: {', '.join(sorted(by_category)) or 'none'}.")
    chosen = [category] if category is not None else sorted(by_category)
    return [_read_visa_category(root, c, by_category[c]) for c in chosen]


# ---------------------------------------------------------------------------------------------- masks


def check_masks(labelled: LabelledSet) -> dict:
    """Reads image and mask headers only: {'checked': n, 'resized': masks whose size differs from their image
    (loaded resized), 'missing': names of defect items without a mask file}."""
    resized, checked, missing = 0, 0, []
    if not labelled.has_masks:
        return {"checked": 0, "resized": 0, "missing": []}
    for item in labelled.test:
        if not item.label:
            continue
        if item.mask is None or not item.mask.is_file():
            missing.append(item.name)
            continue
        checked += 1
        with Image.open(item.path) as img, Image.open(item.mask) as mask:
            resized += img.size != mask.size
    return {"checked": checked, "resized": resized, "missing": missing}


def _note_mask_sizes(labelled: LabelledSet) -> None:
    resized = check_masks(labelled)["resized"]
    if resized:
        labelled.notes.append(f"{labelled.category}: {resized} mask(s) differ in size from their image; they are resized to the image "
                              "size with nearest-neighbour interpolation.")


def load_mask(item: LabelledItem, size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """The item's ground truth as a bool H×W array (any value > 0 is a defect pixel), resized with NEAREST to
    `size` = (width, height), by default the image's size; all False for a normal item."""
    if size is None:
        with Image.open(item.path) as img:
            size = img.size
    width, height = size
    if item.mask is None:
        if item.label:
            raise ValueError(f"{item.name} is a defect image without a mask; check LabelledSet.has_masks before loading masks.")
        return np.zeros((height, width), bool)
    with Image.open(item.mask) as mask:
        if mask.mode == "P":  # palette index 0 need not be black
            mask = mask.convert("RGB")
        arr = np.asarray(mask)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2)  # alpha would mark every pixel
    binary = arr > 0
    if binary.shape != (height, width):
        binary = np.asarray(Image.fromarray(binary.astype(np.uint8) * 255, "L").resize((width, height), Image.NEAREST)) > 0
    return binary


# ---------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class Layout:
    """A registered layout: its reader, the parser of its spec text, and the form of that text."""

    read: Callable[..., object]
    from_spec: Callable[[str], list[LabelledSet]]
    form: str


def _mvtec_from_spec(rest: str) -> list[LabelledSet]:
    path = Path(rest).expanduser()
    if not path.exists() and path.parent.is_dir() and _mvtec_categories(path.parent):
        return read_mvtec(path.parent, path.name)  # ROOT/CATEGORY with an unknown CATEGORY: list the valid ones
    return read_mvtec(path)


def _visa_from_spec(rest: str) -> list[LabelledSet]:
    path = Path(rest).expanduser()
    if not (path / VISA_SPLIT).is_file() and (path.parent / VISA_SPLIT).is_file():
        return read_visa(path.parent, path.name)  # ROOT/CATEGORY
    return read_visa(path)


FOLDER_OPTIONS = ("mask", "normal_test", "test_fraction", "name")


def _folder_from_spec(rest: str) -> list[LabelledSet]:
    positional, options = [], {}
    for token in (t.strip() for t in rest.split(",")):
        key, eq, value = token.partition("=")
        if eq:
            if key not in FOLDER_OPTIONS:
                raise ConfigError(f"folder spec: unknown option '{key}'. Options: {', '.join(FOLDER_OPTIONS)}. Form: {LAYOUTS['folder'].form}.")
            options[key] = value
        elif token:
            positional.append(token)
    if not 2 <= len(positional) <= 3 or (len(positional) == 3 and "mask" in options):
        raise ConfigError(f"folder spec '{rest}': expected NORMAL_DIR,ABNORMAL_DIR[,MASK_DIR]. Form: {LAYOUTS['folder'].form}.")
    try:
        fraction = float(options.get("test_fraction", 0.2))
    except ValueError:
        raise ConfigError(f"folder spec: test_fraction must be a number, got '{options['test_fraction']}'.") from None
    mask = positional[2] if len(positional) == 3 else options.get("mask")
    return [read_folder(positional[0], positional[1], mask, options.get("normal_test"), fraction, options.get("name"))]


LAYOUTS: dict[str, Layout] = {
    "mvtec": Layout(read_mvtec, _mvtec_from_spec, "mvtec:ROOT[/CATEGORY]"),
    "visa": Layout(read_visa, _visa_from_spec, "visa:ROOT[/CATEGORY]"),
    "folder": Layout(read_folder, _folder_from_spec, "folder:NORMAL_DIR,ABNORMAL_DIR[,MASK_DIR][,normal_test=DIR][,test_fraction=F][,name=NAME]"),
}


def parse_data_spec(spec: str) -> list[LabelledSet]:
    """The labelled sets named by `LAYOUT:ARGS`, e.g. 'mvtec:/data/mvtec/bottle' or 'folder:good,bad,masks'."""
    forms = "; ".join(layout.form for layout in LAYOUTS.values())
    name, colon, rest = spec.partition(":")
    if not colon or not rest.strip():
        raise ConfigError(f"Data spec '{spec}' is not LAYOUT:ARGS. Use one of: {forms}.")
    if name not in LAYOUTS:
        raise UnknownNameError(f"Unknown layout '{name}' in data spec '{spec}'. Known layouts: {forms}.")
    return LAYOUTS[name].from_spec(rest.strip())
