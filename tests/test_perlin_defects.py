"""The second offline defect benchmark (zsad/data/perlin_defects.py): other photographs, Perlin-noise regions, exact
masks, fit and test crops from disjoint parts of each photograph, byte-identical reruns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import files_under, level_coded
from PIL import Image

from zsad.data import perlin_defects
from zsad.data.defects import CATEGORIES as FIRST_CATEGORIES
from zsad.data.defects import FAMILIES as FIRST_FAMILIES
from zsad.data.layouts import check_masks, load_mask, read_mvtec
from zsad.data.perlin_defects import (
    MIN_AREA,
    PERLIN_CATEGORIES,
    PERLIN_FAMILIES,
    load_perlin_source,
    make_perlin_benchmark,
    make_perlin_defect_image,
    perlin_noise,
    perlin_region,
)
from zsad.errors import ConfigError, UnknownNameError

SMALL = dict(size=64, n_train=5, n_test_good=3, n_test_defect_per_family=3)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("perlin")
    return root, make_perlin_benchmark(root, **SMALL)


def test_it_is_a_second_benchmark_not_the_first_again():
    assert not set(PERLIN_CATEGORIES) & set(FIRST_CATEGORIES) and not set(PERLIN_FAMILIES) & set(FIRST_FAMILIES)
    assert not {c.source for c in PERLIN_CATEGORIES.values()} & {f"skimage.data.{c.source}" for c in FIRST_CATEGORIES.values()}


def test_the_benchmark_reads_back_as_mvtec(bench):
    root, summary = bench
    sets = {s.category: s for s in read_mvtec(root)}
    assert sorted(sets) == sorted(PERLIN_CATEGORIES) == sorted(summary["categories"]) and summary["families"] == list(PERLIN_FAMILIES)
    for labelled in sets.values():
        assert labelled.has_masks and labelled.notes == [] and len(labelled.train) == 5
        counts: dict[str, int] = {}
        for item in labelled.test:
            counts[item.defect] = counts.get(item.defect, 0) + 1
            with Image.open(item.path) as img:
                assert img.mode == "RGB" and img.size == (64, 64)
        assert counts == {"good": 3, **{f: 3 for f in PERLIN_FAMILIES}}
        assert check_masks(labelled) == {"checked": 3 * len(PERLIN_FAMILIES), "resized": 0, "missing": []}
        assert all(load_mask(i).mean() >= MIN_AREA for i in labelled.test if i.label)


def test_masks_are_exact(bench):
    """Each defect image equals its clean crop outside the mask and differs inside it almost everywhere (only a
    pixel already at 0 or 255 may keep its value under `tone` and `grain`)."""
    root, _ = bench
    changed = []
    for category in PERLIN_CATEGORIES:
        source = load_perlin_source(category)
        for family in PERLIN_FAMILIES:
            for i in range(3):
                image, mask, clean = make_perlin_defect_image(category, source, family, i, 0, 64)
                assert np.array_equal(np.asarray(Image.open(root / category / "test" / family / f"{i:03d}.png")), image)
                assert np.array_equal(np.asarray(Image.open(root / category / "ground_truth" / family / f"{i:03d}_mask.png")) > 0, mask)
                assert np.array_equal(image[~mask], clean[~mask]), f"{category}/{family}/{i}: pixels outside the mask changed"
                inside = (image != clean).any(axis=-1)[mask].mean()
                assert inside >= 0.85, f"{category}/{family}/{i}: only {inside:.0%} of the mask changed"
                changed.append(inside)
                # visible: the region's mean absolute change is well above the 8-bit quantisation
                assert np.abs(image.astype(int) - clean)[mask].mean() >= 10, f"{category}/{family}/{i}"
    assert np.mean(changed) >= 0.97


def test_reruns_are_byte_identical_and_image_k_does_not_depend_on_counts(bench, tmp_path):
    root, summary = bench
    again = make_perlin_benchmark(tmp_path / "again", **SMALL)
    assert files_under(tmp_path / "again") == files_under(root) and again == {**summary, "root": str(tmp_path / "again")}
    make_perlin_benchmark(tmp_path / "more", ["moon"], size=64, n_train=7, n_test_good=4, n_test_defect_per_family=4)
    more = files_under(tmp_path / "more")
    assert all(more[name] == data for name, data in files_under(root).items() if name.startswith("moon/") and not name.endswith(".json"))
    make_perlin_benchmark(tmp_path / "seed1", ["moon"], seed=1, **SMALL)
    assert files_under(tmp_path / "seed1")["moon/train/good/000.png"] != files_under(root)["moon/train/good/000.png"]


def test_fit_and_test_crops_come_from_disjoint_source_regions(monkeypatch, tmp_path):
    """Every photograph replaced by a level-coded stand-in (each checkerboard block flat at its own level): every fit
    image, test image and clean part of a defect image is flat at a level of its own split's blocks."""
    shapes = {c: load_perlin_source(c).shape for c in PERLIN_CATEGORIES}
    monkeypatch.setattr(perlin_defects, "load_perlin_source", lambda category: level_coded(shapes[category]))
    make_perlin_benchmark(tmp_path, size=32, n_train=30, n_test_good=10, n_test_defect_per_family=5)
    train_levels = {10 + 15 * k for k in range(16) if (k // 4 + k % 4) % 2 == 0}
    test_levels = {10 + 15 * k for k in range(16)} - train_levels
    for labelled in read_mvtec(tmp_path):
        seen: dict[str, set] = {"train": set(), "test": set()}
        for split, path, mask in [("train", p, None) for p in labelled.train] + [("test", i.path, load_mask(i) if i.label else None) for i in labelled.test]:
            pixels = np.asarray(Image.open(path))
            clean = pixels if mask is None else pixels[~mask]
            assert clean.min() == clean.max(), f"{path} left its block"
            seen[split].add(int(clean.flat[0]))
        assert seen["train"] <= train_levels and seen["test"] <= test_levels, labelled.category
        assert len(seen["train"]) >= 4 and len(seen["test"]) >= 4


def test_perlin_noise_is_zero_on_the_lattice_and_smooth_between():
    rng = np.random.default_rng(0)
    noise = perlin_noise(96, 4, rng)
    assert noise.shape == (96, 96) and np.allclose(noise[::24, ::24], 0)  # gradient noise vanishes at lattice points
    assert np.abs(noise).max() <= np.sqrt(2) / 2 + 1e-9 and noise.std() > 0.05  # bounded by √2/2 for unit gradients
    assert np.abs(np.diff(noise, axis=0)).max() < 0.2 and np.abs(np.diff(noise, axis=1)).max() < 0.2  # continuous
    assert not np.array_equal(noise, perlin_noise(96, 4, np.random.default_rng(1)))


def test_regions_are_irregular_and_large_enough():
    areas, fills = [], []
    for seed in range(40):
        region = perlin_region(64, np.random.default_rng(seed))
        ys, xs = np.nonzero(region)
        areas.append(region.mean())
        fills.append(region.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1)))  # share of its bounding box
    assert min(areas) >= MIN_AREA and max(areas) < 0.5
    assert np.median(fills) < 0.78  # a drawn ellipse fills π/4 ≈ 0.785 of its box, a rectangle all of it


def test_refusals_say_what_to_do(tmp_path):
    with pytest.raises(UnknownNameError, match="Known: moon, cell, stars, retina, terrain"):
        make_perlin_benchmark(tmp_path, ["mars"])
    with pytest.raises(ConfigError, match="at least 16"):
        make_perlin_benchmark(tmp_path, ["moon"], size=8)
    with pytest.raises(ConfigError, match="at least 1"):
        make_perlin_benchmark(tmp_path, ["moon"], n_train=0)
    (tmp_path / "moon").mkdir()
    (tmp_path / "moon" / "mine.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not made by"):
        make_perlin_benchmark(tmp_path, ["moon"], **SMALL)
    assert (tmp_path / "moon" / "mine.txt").read_text() == "keep"
