"""A second offline defect benchmark in MVTec AD's layout, independent of the first (zsad/data/defects.py) in its
photographs and in its defect generator, so that a default chosen on both is not tuned to one generator's shapes.

`make_perlin_benchmark(root)` writes `<root>/<category>/{train/good, test/good, test/<family>,
ground_truth/<family>/<name>_mask.png}`, which `zsad.data.layouts.read_mvtec` reads like the real dataset.

Categories, all textures, each cut from one photograph that an installed package ships (sources and licences as
those packages' documentation states them); crops of a fixed side in source pixels, mirrored at random, fit and
test crops from disjoint checkerboard blocks (`package_images.block_crops`), so they never share a source pixel:
* `moon`: the lunar surface (`skimage.data.moon`), greyscale;
* `cell`: a microscopy image of cells (`skimage.data.cell`), greyscale;
* `stars`: the Hubble eXtreme Deep Field (`skimage.data.hubble_deep_field`), colour;
* `retina`: a fundus photograph (`skimage.data.retina`), the square inside the fundus disc, halved, colour;
* `terrain`: the Jacksboro fault elevation model that matplotlib ships (`jacksboro_fault_dem.npz`), rendered
  as hill shading, greyscale.

Defects, DRAEM-style: the region is a 2-D Perlin noise (gradient noise, two octaves) under a Gaussian envelope,
thresholded, so its outline is irregular and never a drawn primitive (the first benchmark paints lines, ellipses,
discs and rectangles). The mask is exactly the region; the image equals the clean crop outside it. Families:
* `foreign`: the region shows a crop of an unrelated photograph (skimage's astronaut, coffee, chelsea, rocket)
  at 60–100 % opacity, inverted when it would look too much like what it covers;
* `tone`: the region's brightness moves 35–70 grey levels away from its mean and its contrast is scaled
  by 0.6–1.4 (discolouration, burn marks);
* `grain`: Gaussian noise of σ = 20–40 grey levels added in the region, the same in every channel (a rough or
  contaminated patch). In both `tone` and `grain` a pixel already at 0 or 255 may keep its value.

Seeded per (category, split, family, index, seed) like the first benchmark: byte-identical across runs and thread
counts, and image k does not depend on how many images are made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

from zsad.data.defects import _rng, check_benchmark_request, write_category
from zsad.data.package_images import _skimage, block_crops

PERLIN_FAMILIES = ("foreign", "tone", "grain")
FOREIGN_SOURCES = ("astronaut", "coffee", "chelsea", "rocket")
MIN_AREA = 0.004  # of the image: a region smaller than this is drawn again


@dataclass(frozen=True)
class PerlinCategory:
    """A category of the second benchmark: where its photograph comes from and the crop side in source pixels."""

    source: str
    side: int


PERLIN_CATEGORIES: dict[str, PerlinCategory] = {
    "moon": PerlinCategory("skimage.data.moon", 96),
    "cell": PerlinCategory("skimage.data.cell", 112),
    "stars": PerlinCategory("skimage.data.hubble_deep_field", 128),
    "retina": PerlinCategory("skimage.data.retina", 112),
    "terrain": PerlinCategory("matplotlib jacksboro_fault_dem.npz", 80),
}


def _hill_shading() -> np.ndarray:
    from matplotlib import cbook
    from matplotlib.colors import LightSource

    with cbook.get_sample_data("jacksboro_fault_dem.npz") as dem:
        elevation = np.asarray(dem["elevation"], np.float64)
    shade = LightSource(azdeg=315, altdeg=45).hillshade(elevation, vert_exag=0.05, dx=10, dy=10)
    return np.round(255 * shade).astype(np.uint8)


def _retina_inner_square() -> np.ndarray:
    image = _skimage().retina()  # 1411² with the fundus disc centred, radius about 697 px
    centre, half = 703, 480  # the largest square inside the disc is about 985 px: keep 960, halved
    inner = image[centre - half : centre + half, centre - half : centre + half]
    return np.asarray(Image.fromarray(inner).resize((half, half), Image.BILINEAR))


def load_perlin_source(category: str) -> np.ndarray:
    """The photograph a category is cut from, as uint8 (H×W or H×W×3)."""
    if category == "terrain":
        return _hill_shading()
    if category == "retina":
        return _retina_inner_square()
    return getattr(_skimage(), PERLIN_CATEGORIES[category].source.rsplit(".", 1)[1])()


# ------------------------------------------------------------------------------------------------- regions


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (6 * t - 15) + 10)  # Perlin's quintic: zero first and second derivatives at 0 and 1


def perlin_noise(size: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """size×size gradient noise on a lattice of `cells`×`cells` cells with random unit gradients; zero at lattice points."""
    angles = rng.uniform(0, 2 * np.pi, (cells + 1, cells + 1))
    gradients = np.stack([np.sin(angles), np.cos(angles)], -1)  # (gy, gx) at each lattice point
    pos = np.arange(size) * cells / size
    cell, frac = pos.astype(int), pos - pos.astype(int)
    fy, fx = frac[:, None], frac[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = gradients[cell[:, None] + dy, cell[None, :] + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    u, v = _fade(fx), _fade(fy)
    top = corner(0, 0) + u * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + u * (corner(1, 1) - corner(1, 0))
    return top + v * (bottom - top)


def perlin_region(size: int, rng: np.random.Generator) -> np.ndarray:
    """A bool size×size defect region: two octaves of Perlin noise under a Gaussian envelope at a random centre,
    thresholded; drawn again while it covers less than MIN_AREA of the image."""
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(50):
        cells = int(rng.integers(2, 5))
        noise = perlin_noise(size, cells, rng) + 0.5 * perlin_noise(size, 2 * cells, rng)
        noise /= noise.std() + 1e-12
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        radius = rng.uniform(0.08, 0.18) * size
        envelope = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
        region = envelope * (1 + 0.6 * noise) > 0.5
        if region.mean() >= MIN_AREA:
            return region
    raise RuntimeError("perlin_region: no region large enough in 50 draws")  # pragma: no cover - about 1 in 10^30


# ------------------------------------------------------------------------------------------------- defects
# Each takes a clean crop (size×size×3 uint8), a generator and the region; returns the defect image, which equals
# the crop outside the region.


def _foreign(img: np.ndarray, rng: np.random.Generator, region: np.ndarray) -> np.ndarray:
    size = img.shape[0]
    scene = getattr(_skimage(), FOREIGN_SOURCES[int(rng.integers(len(FOREIGN_SOURCES)))])()
    side = int(rng.integers(48, min(scene.shape[:2]) // 2))
    y, x = int(rng.integers(0, scene.shape[0] - side)), int(rng.integers(0, scene.shape[1] - side))
    patch = np.asarray(Image.fromarray(scene[y : y + side, x : x + side]).convert("RGB").resize((size, size), Image.BILINEAR)).astype(np.float64)
    if np.abs(patch[region] - img[region]).mean() < 40:  # too alike to be seen: show its negative
        patch = 255 - patch
    opacity = rng.uniform(0.6, 1.0)
    out = img.copy()
    out[region] = np.clip(np.round((1 - opacity) * img[region] + opacity * patch[region]), 0, 255).astype(np.uint8)
    return out


def _tone(img: np.ndarray, rng: np.random.Generator, region: np.ndarray) -> np.ndarray:
    inside = img[region].astype(np.float64)
    mean = inside.mean()
    shift = rng.uniform(35, 70) * (1 if mean < 128 else -1)  # away from the nearer end of the range
    gain = rng.uniform(0.6, 1.4)
    out = img.copy()
    out[region] = np.clip(np.round((inside - mean) * gain + mean + shift), 0, 255).astype(np.uint8)
    return out


def _grain(img: np.ndarray, rng: np.random.Generator, region: np.ndarray) -> np.ndarray:
    sigma = rng.uniform(20, 40)
    noise = rng.normal(0, sigma, img.shape[:2])[region][:, None]
    out = img.copy()
    out[region] = np.clip(np.round(img[region] + noise), 0, 255).astype(np.uint8)
    return out


PERLIN_DEFECTS: dict[str, Callable[[np.ndarray, np.random.Generator, np.ndarray], np.ndarray]] = {
    "foreign": _foreign,
    "tone": _tone,
    "grain": _grain,
}


def _perlin_crop(category: str, source: np.ndarray, rng: np.random.Generator, split: str, size: int) -> np.ndarray:
    side = PERLIN_CATEGORIES[category].side
    return block_crops([source], 1, rng, split, size, min_side=side, max_side=side, flip=True, mode="RGB")[0]


def make_perlin_defect_image(category: str, source: np.ndarray, family: str, index: int, seed: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(defect image, bool mask, the clean test crop it was made from) of test image `index` of `family`."""
    rng = _rng("perlin", category, "test", family, index, seed)
    clean = _perlin_crop(category, source, rng, "test", size)
    region = perlin_region(size, rng)
    return PERLIN_DEFECTS[family](clean, rng, region), region, clean


def make_perlin_benchmark(
    root: Path | str,
    categories: Optional[list[str]] = None,
    size: int = 128,
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_defect_per_family: int = 10,
    seed: int = 0,
) -> dict:
    """Write the second MVTec-layout benchmark of `categories` (default: all) under `root`; returns a summary."""
    chosen = list(PERLIN_CATEGORIES) if categories is None else list(categories)
    check_benchmark_request("make_perlin_benchmark", "Perlin-benchmark", chosen, PERLIN_CATEGORIES, size,
                            (n_train, n_test_good, n_test_defect_per_family))
    root = Path(root).expanduser()
    summary: dict = {"root": str(root), "size": size, "seed": seed, "families": list(PERLIN_FAMILIES), "categories": {}}
    for category in chosen:
        source = load_perlin_source(category)

        def clean(split: str, i: int, category: str = category, source: np.ndarray = source) -> np.ndarray:
            return _perlin_crop(category, source, _rng("perlin", category, split, "good", i, seed), split, size)

        entry = {"kind": "texture", "source": PERLIN_CATEGORIES[category].source, "train": n_train, "test_good": n_test_good,
                 "test_defect": {family: n_test_defect_per_family for family in PERLIN_FAMILIES}}
        write_category(
            root / category,
            clean=clean,
            defect=lambda family, i, category=category, source=source: make_perlin_defect_image(category, source, family, i, seed, size)[:2],
            entry=entry, marker={"size": size, "seed": seed, "generator": "perlin"},
        )
        summary["categories"][category] = entry
    return summary
