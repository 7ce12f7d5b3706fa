"""An offline anomaly-detection benchmark in MVTec AD's layout, made from photographs that scikit-image ships,
with synthetic defects whose masks are exact (the mask marks the pixels the defect painted, nothing else).

`make_defect_benchmark(root)` writes `<root>/<category>/{train/good, test/good, test/<family>,
ground_truth/<family>/<name>_mask.png}`, which `zsad.data.layouts.read_mvtec` reads like the real dataset.

Categories (all from `skimage.data`; licences as its documentation states them):
* textures, crops of a fixed 96 px side from one 512×512 photograph, mirrored at random:
  `brick` (brick wall, CC0 Textures "Bricks25", CC0), `grass` (DeviantArt "Grass-01" by linolafett, CC0),
  `gravel` (CC0 Textures "Gravel04", CC0), greyscale, saved as RGB; `tissue` (`immunohistochemistry`,
  colonic glands stained with DAB and hematoxylin, Center for Microscopy and Molecular Imaging, no known
  copyright restrictions), colour.
* an object: `coins` (Greek coins from Pompeii, Brooklyn Museum Collection, no known copyright restrictions):
  24 coins lying in 4 rows of 6; a normal image is one coin centred in a 52 px crop (±3 px jitter, one of
  the 8 rotations/mirrorings), so every normal image has the same structure (a round coin on cloth)
  while the coins' faces vary as real parts do. In `coins` the test images show the fit coins in new poses:
  its normal test images are exchangeable with the fit and calibration images, so the false-alarm rate must
  hold there. `coins_other` has the same fit images but tests on the 12 other coins: shifted normals, where
  the rate need not hold (a robustness row, labelled so).

Fit (`train`) and test crops never share a source pixel: textures are cut with
`package_images.block_crops` (4×4 checkerboard of blocks, train from the even blocks, test from the odd
ones, a crop never leaves its block); each coin owns a cell of the photograph (rows split halfway between
coin rows, columns halfway between neighbouring coins) and a crop never leaves its coin's cell, train
coins being those with even row+column and `coins_other`'s test coins the others (12 each); `coins` tests on
new crops of the train coins (by design: the same parts, new poses).

Defect families, painted on a clean test crop at the output resolution (no anti-aliasing, so the mask is
exact); on `coins` they land on the coin:
* `scratch`: a thin, slightly bent line, bright on dark surroundings and dark on bright ones.
* `hole`: a rotated filled ellipse of dark, radially shaded colour.
* `stain`: an irregular blob (union of discs) blended half-way towards a tint (rust, oil, mould, ink).
* `patch`: a rectangle of the same image pasted (mirrored) elsewhere, from the spot whose content differs
  most from what it covers (brightness-shifted if even that is too alike): a CutPaste-style misplacement.

Everything is seeded per (category, split, family, index, seed) with numpy, so the files are byte-identical
across runs and thread counts, and image k does not depend on how many images are made.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
from PIL import Image, ImageDraw

from zsad.data.package_images import _skimage, block_crops
from zsad.errors import ConfigError, UnknownNameError

FAMILIES = ("scratch", "hole", "stain", "patch")
MARKER = ".zsad_defects.json"  # marks a category folder as ours, so that a rerun may replace it

# Coin centres (y, x) in skimage.data.coins() (303×384), measured once by thresholding; rows top to bottom.
COIN_CENTRES = (
    ((54, 44), (56, 100), (52, 155), (54, 217), (53, 276), (47, 334)),
    ((124, 46), (126, 103), (127, 154), (124, 207), (120, 270), (125, 336)),
    ((198, 44), (196, 102), (198, 154), (193, 213), (194, 274), (187, 347)),
    ((260, 46), (266, 114), (262, 172), (264, 244), (263, 301), (268, 358)),
)
COIN_SIDE, COIN_JITTER = 52, 3  # the narrowest cell is 52 px wide


@dataclass(frozen=True)
class Category:
    """A benchmark category: its `skimage.data` source, kind (texture or object), crop side in source pixels, and for
    objects which coins its test images show ("train": the fit coins in new poses; "test": the other coins)."""

    source: str
    kind: str
    side: int
    test_coins: str = "test"


CATEGORIES: dict[str, Category] = {
    "brick": Category("brick", "texture", 96),
    "grass": Category("grass", "texture", 96),
    "gravel": Category("gravel", "texture", 96),
    "tissue": Category("immunohistochemistry", "texture", 96),
    "coins": Category("coins", "object", COIN_SIDE, test_coins="train"),
    "coins_other": Category("coins", "object", COIN_SIDE, test_coins="test"),
}
SHIFTED_NORMALS = {"coins_other": "its normal test images are other coins than the fit ones (shifted normals): the false-alarm rate need not hold"}


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def coin_cells(shape: tuple[int, ...]) -> list[tuple[int, int, int, int, int, int, int]]:
    """(y0, y1, x0, x1, centre y, centre x, parity) of each coin's cell: the cells tile the photograph, so
    crops that stay inside different cells never share a pixel; parity 0 = fit coins, 1 = test coins."""
    height, width = shape[:2]
    row_y = [int(np.mean([c[0] for c in row])) for row in COIN_CENTRES]
    y_edges = [0, *((a + b) // 2 for a, b in zip(row_y, row_y[1:])), height]
    cells = []
    for r, row in enumerate(COIN_CENTRES):
        x_edges = [0, *((a[1] + b[1]) // 2 for a, b in zip(row, row[1:])), width]
        for c, (cy, cx) in enumerate(row):
            cells.append((y_edges[r], y_edges[r + 1], x_edges[c], x_edges[c + 1], cy, cx, (r + c) % 2))
    return cells


def _coin_crop(source: np.ndarray, rng: np.random.Generator, split: str, size: int) -> np.ndarray:
    parity = {"train": 0, "test": 1}[split]
    cells = [cell for cell in coin_cells(source.shape) if cell[6] == parity]
    y0, y1, x0, x1, cy, cx, _ = cells[int(rng.integers(len(cells)))]
    dy, dx = rng.integers(-COIN_JITTER, COIN_JITTER + 1, 2)
    side = min(COIN_SIDE, y1 - y0, x1 - x0)
    top = int(np.clip(cy + dy - side // 2, y0, y1 - side))  # never leave the coin's cell
    left = int(np.clip(cx + dx - side // 2, x0, x1 - side))
    crop = Image.fromarray(source[top : top + side, left : left + side]).convert("RGB")
    arr = np.asarray(crop.resize((size, size), Image.BILINEAR))
    arr = np.rot90(arr, int(rng.integers(4)))
    return np.ascontiguousarray(arr[:, ::-1] if rng.uniform() < 0.5 else arr)


def _clean_crop(category: str, source: np.ndarray, rng: np.random.Generator, split: str, size: int) -> np.ndarray:
    """A defect-free size×size×3 uint8 crop of `split`'s part of the source."""
    spec = CATEGORIES[category]
    if spec.kind == "object":
        return _coin_crop(source, rng, spec.test_coins if split == "test" else split, size)
    return block_crops([source], 1, rng, split, size, min_side=spec.side, max_side=spec.side, flip=True, mode="RGB")[0]


# ---------------------------------------------------------------------------------------------- defects
# Each takes a clean crop, a generator and the defect's centre (x, y); returns (image, mask) where the image
# equals the crop outside the mask.


def _draw_mask(size: int, draw: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw(ImageDraw.Draw(canvas))  # PIL draws without anti-aliasing: the mask is exactly the painted pixels
    return np.asarray(canvas) > 0


def _scratch(img: np.ndarray, rng: np.random.Generator, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    length = rng.uniform(0.3, 0.55) * size
    theta = rng.uniform(0, np.pi)
    along, across = np.array([np.cos(theta), np.sin(theta)]), np.array([-np.sin(theta), np.cos(theta)])
    bend = rng.uniform(-0.1, 0.1) * length  # a parabola through both ends: a slightly curved stroke
    points = [tuple(centre + t * length * along + (1 - 4 * t * t) * bend * across) for t in np.linspace(-0.5, 0.5, 9)]
    width = int(rng.integers(1, max(1, size // 32) + 1))
    mask = _draw_mask(size, lambda d: d.line(points, fill=255, width=width))
    bright = img[mask].mean() < 128  # contrast with what the scratch crosses
    value = int(rng.integers(215, 256)) if bright else int(rng.integers(0, 40))
    out = img.copy()
    out[mask] = value
    return out, mask


def _ellipse(centre: np.ndarray, axes: np.ndarray, phi: float, n: int = 48) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = axes[0] * np.cos(t), axes[1] * np.sin(t)
    return [(float(centre[0] + a * np.cos(phi) - b * np.sin(phi)), float(centre[1] + a * np.sin(phi) + b * np.cos(phi))) for a, b in zip(x, y)]


def _hole(img: np.ndarray, rng: np.random.Generator, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    axes, phi = rng.uniform(0.06, 0.13, 2) * size, rng.uniform(0, np.pi)
    mask = _draw_mask(size, lambda d: d.polygon(_ellipse(centre, axes, phi), fill=255))
    yy, xx = np.mgrid[0:size, 0:size]
    radius = np.hypot(xx - centre[0], yy - centre[1]) / axes.max()
    shade = np.clip(rng.uniform(0, 25) + 30 * radius**2, 0, 255)  # darkest in the middle
    out = img.copy()
    out[mask] = np.round(shade[mask])[:, None].astype(np.uint8)
    return out, mask


TINTS = np.array([(150, 75, 30), (60, 45, 30), (70, 110, 40), (60, 70, 150), (120, 40, 110)], np.float64)  # rust, oil, mould, ink, dye


def _stain(img: np.ndarray, rng: np.random.Generator, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    discs = [(centre + rng.normal(0, 0.06 * size, 2), rng.uniform(0.04, 0.1) * size) for _ in range(int(rng.integers(3, 7)))]

    def draw(d: ImageDraw.ImageDraw) -> None:
        for (x, y), r in discs:
            d.ellipse([x - r, y - r, x + r, y + r], fill=255)

    mask = _draw_mask(size, draw)
    tint = TINTS[int(rng.integers(len(TINTS)))] + rng.uniform(-20, 20, 3)
    alpha = rng.uniform(0.45, 0.7)
    out = img.copy()
    out[mask] = np.clip(np.round((1 - alpha) * img[mask] + alpha * tint), 0, 255).astype(np.uint8)
    return out, mask


def _patch(img: np.ndarray, rng: np.random.Generator, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    w, h = np.maximum(3, (rng.uniform(0.15, 0.3, 2) * size).astype(int))
    x0, y0 = (int(np.clip(round(centre[0] - w / 2), 0, size - w)), int(np.clip(round(centre[1] - h / 2), 0, size - h)))
    covered = img[y0 : y0 + h, x0 : x0 + w].astype(np.int16)
    ys, xs = np.mgrid[0 : size - h + 1, 0 : size - w + 1]
    apart = (xs + w <= x0) | (xs >= x0 + w) | (ys + h <= y0) | (ys >= y0 + h)  # the source never overlaps the spot
    spots = np.flatnonzero(apart.ravel())
    best, best_diff = covered, -1.0
    for k in rng.choice(spots, size=min(8, len(spots)), replace=False):
        sy, sx = divmod(int(k), size - w + 1)
        content = img[sy : sy + h, sx : sx + w][::-1] if rng.uniform() < 0.5 else img[sy : sy + h, sx : sx + w][:, ::-1]
        diff = float(np.abs(content.astype(np.int16) - covered).mean())
        if diff > best_diff:
            best, best_diff = content, diff
    pasted = best.astype(np.int16)
    if best_diff < 20:  # too alike to be a visible defect (e.g. a flat region): shift the brightness away
        pasted = pasted + (50 if covered.mean() < 128 else -50)
    out = img.copy()
    out[y0 : y0 + h, x0 : x0 + w] = np.clip(pasted, 0, 255).astype(np.uint8)
    mask = np.zeros((size, size), bool)
    mask[y0 : y0 + h, x0 : x0 + w] = True
    return out, mask


DEFECTS: dict[str, Callable[[np.ndarray, np.random.Generator, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _scratch,
    "hole": _hole,
    "stain": _stain,
    "patch": _patch,
}


def make_defect_image(category: str, source: np.ndarray, family: str, index: int, seed: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(defect image, bool mask, the clean test crop it was painted on) of test image `index` of `family`."""
    rng = _rng(category, "test", family, index, seed)
    clean = _clean_crop(category, source, rng, "test", size)
    margin = (0.3, 0.7) if CATEGORIES[category].kind == "object" else (0.15, 0.85)  # objects: on the coin
    image, mask = DEFECTS[family](clean, rng, rng.uniform(*margin, 2) * size)
    return image, mask, clean


def _load_source(category: str) -> np.ndarray:
    return getattr(_skimage(), CATEGORIES[category].source)()


def _save(arr: np.ndarray, path: Path, mode: str) -> None:
    Image.fromarray(arr, mode).save(path, format="PNG")


def _prepare(folder: Path) -> None:
    """Replace a category folder made by an earlier run; refuse to write into anyone else's files."""
    if folder.exists():
        if (folder / MARKER).is_file():
            shutil.rmtree(folder)
        elif any(folder.iterdir()):
            raise ConfigError(f"'{folder}' exists and was not made by zsad's benchmark generators (make_defect_benchmark, "
                              "make_perlin_benchmark); choose an empty root, or delete the folder.")
    folder.mkdir(parents=True, exist_ok=True)


def write_category(folder: Path, clean: Callable[[str, int], np.ndarray], defect: Callable[[str, int], tuple[np.ndarray, np.ndarray]],
                   entry: dict, marker: dict) -> None:
    """Write one category in MVTec AD's layout: `clean(split, i)` gives normal image i of "train" or "test",
    `defect(family, i)` defect image i of a family and its bool mask; `entry` holds the counts ("train",
    "test_good", "test_defect": {family: n}); the marker file records `marker` and `entry`."""
    _prepare(folder)
    digits = max(3, len(str(max(entry["train"], entry["test_good"], *entry["test_defect"].values()) - 1)))

    def name(i: int) -> str:
        return f"{i:0{digits}d}"  # MVTec's 000.png style

    for split, count in (("train", entry["train"]), ("test", entry["test_good"])):
        (folder / split / "good").mkdir(parents=True)
        for i in range(count):
            _save(clean(split, i), folder / split / "good" / f"{name(i)}.png", "RGB")
    for family, count in entry["test_defect"].items():
        (folder / "test" / family).mkdir(parents=True)
        (folder / "ground_truth" / family).mkdir(parents=True)
        for i in range(count):
            image, mask = defect(family, i)
            _save(image, folder / "test" / family / f"{name(i)}.png", "RGB")
            _save(mask.astype(np.uint8) * 255, folder / "ground_truth" / family / f"{name(i)}_mask.png", "L")
    (folder / MARKER).write_text(json.dumps({**marker, **entry}, indent=1, sort_keys=True) + "\n")


def check_benchmark_request(generator: str, what: str, chosen: list[str], known: Iterable[str], size: int, counts: tuple[int, ...]) -> None:
    """The argument checks both benchmark generators share: known categories, room for the defects, no empty split."""
    known = list(known)
    unknown = [c for c in chosen if c not in known]
    if unknown:
        raise UnknownNameError(f"Unknown {what} categor{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}. Known: {', '.join(known)}.")
    if size < 16:
        raise ConfigError(f"{generator}: size must be at least 16 px (the defects need room); got {size}.")
    if min(counts) < 1:
        raise ConfigError(f"{generator}: n_train, n_test_good and n_test_defect_per_family must each be at least 1.")


def make_defect_benchmark(
    root: Path | str,
    categories: Optional[list[str]] = None,
    size: int = 64,
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_defect_per_family: int = 10,
    seed: int = 0,
) -> dict:
    """Write an MVTec-layout benchmark of `categories` (default: all) under `root`; returns a summary of what was written."""
    chosen = list(CATEGORIES) if categories is None else list(categories)
    check_benchmark_request("make_defect_benchmark", "defect-benchmark", chosen, CATEGORIES, size, (n_train, n_test_good, n_test_defect_per_family))
    root = Path(root).expanduser()
    summary: dict = {"root": str(root), "size": size, "seed": seed, "families": list(FAMILIES), "categories": {}}
    for category in chosen:
        source = _load_source(category)
        spec = CATEGORIES[category]
        entry = {"kind": spec.kind, "source": f"skimage.data.{spec.source}", "train": n_train, "test_good": n_test_good,
                 "test_defect": {family: n_test_defect_per_family for family in FAMILIES}}
        write_category(
            root / category,
            clean=lambda split, i, category=category, source=source: _clean_crop(category, source, _rng(category, split, "good", i, seed), split, size),
            defect=lambda family, i, category=category, source=source: make_defect_image(category, source, family, i, seed, size)[:2],
            entry=entry, marker={"size": size, "seed": seed},
        )
        summary["categories"][category] = entry
    return summary
