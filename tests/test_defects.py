"""The offline defect benchmark (zsad/data/defects.py): an MVTec-layout tree that read_mvtec reads back,
exact masks, fit and test crops from disjoint parts of the source photographs, byte-identical reruns."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from helpers import files_under, level_coded
from PIL import Image

from zsad.data.defects import CATEGORIES, COIN_SIDE, FAMILIES, _load_source, coin_cells, make_defect_benchmark, make_defect_image
from zsad.data.layouts import check_masks, load_mask, read_mvtec
from zsad.errors import ConfigError, UnknownNameError

SMALL = dict(n_train=6, n_test_good=4, n_test_defect_per_family=3)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("defects")
    return root, make_defect_benchmark(root, **SMALL)


def test_the_benchmark_reads_back_as_mvtec(bench):
    root, summary = bench
    sets = {s.category: s for s in read_mvtec(root)}
    assert sorted(sets) == sorted(CATEGORIES) == sorted(summary["categories"]) and len(sets) >= 4
    kinds = {CATEGORIES[c].kind for c in sets}
    assert kinds == {"texture", "object"} and len(FAMILIES) >= 3 and summary["families"] == list(FAMILIES)
    for category, labelled in sets.items():
        assert labelled.has_masks and labelled.notes == []
        assert [p.name for p in labelled.train] == [f"{i:03d}.png" for i in range(6)]
        defects = {}
        for item in labelled.test:
            defects[item.defect] = defects.get(item.defect, 0) + 1
        assert defects == {"good": 4, **{f: 3 for f in FAMILIES}}
        assert summary["categories"][category]["test_defect"] == {f: 3 for f in FAMILIES}
        assert check_masks(labelled) == {"checked": 3 * len(FAMILIES), "resized": 0, "missing": []}
        for item in labelled.test:
            with Image.open(item.path) as img:
                assert img.mode == "RGB" and img.size == (64, 64)
            if item.label:
                assert item.mask.name == item.path.stem + "_mask.png"
                with Image.open(item.mask) as m:
                    assert m.mode == "L" and set(np.unique(np.asarray(m))) <= {0, 255}
                assert load_mask(item).sum() >= 10


def test_masks_are_exact(bench):
    """Every written defect image equals its clean crop outside the mask and differs inside it, almost everywhere."""
    root, _ = bench
    changed = []
    for category in CATEGORIES:
        source = _load_source(category)
        for family in FAMILIES:
            for i in range(3):
                image, mask, clean = make_defect_image(category, source, family, i, 0, 64)
                written = np.asarray(Image.open(root / category / "test" / family / f"{i:03d}.png"))
                assert np.array_equal(written, image)
                assert np.array_equal(np.asarray(Image.open(root / category / "ground_truth" / family / f"{i:03d}_mask.png")) > 0, mask)
                assert np.array_equal(image[~mask], clean[~mask]), f"{category}/{family}/{i}: pixels outside the mask changed"
                inside = (image != clean).any(axis=-1)[mask].mean()
                assert inside >= 0.8, f"{category}/{family}/{i}: only {inside:.0%} of the mask changed"
                changed.append(inside)
    assert np.mean(changed) >= 0.97


def test_two_runs_are_byte_identical_and_image_k_does_not_depend_on_counts(bench, tmp_path):
    root, _ = bench
    again = make_defect_benchmark(tmp_path / "again", **SMALL)
    assert files_under(root) == files_under(tmp_path / "again") and again == {**bench[1], "root": str(tmp_path / "again")}
    make_defect_benchmark(tmp_path / "more", ["coins", "grass"], n_train=8, n_test_good=5, n_test_defect_per_family=4)
    more = files_under(tmp_path / "more")
    assert all(more[name] == data for name, data in files_under(root).items() if name.split("/")[0] in ("coins", "grass") and not name.endswith(".json"))
    other_seed = make_defect_benchmark(tmp_path / "seed1", ["brick"], seed=1, **SMALL)
    assert other_seed["seed"] == 1 and files_under(tmp_path / "seed1")["brick/train/good/000.png"] != files_under(root)["brick/train/good/000.png"]


def test_reruns_replace_their_own_folders_and_refuse_foreign_ones(tmp_path):
    make_defect_benchmark(tmp_path, ["gravel"], n_train=5, n_test_good=2, n_test_defect_per_family=2)
    make_defect_benchmark(tmp_path, ["gravel"], n_train=3, n_test_good=2, n_test_defect_per_family=1)
    (labelled,) = read_mvtec(tmp_path, "gravel")
    assert len(labelled.train) == 3 and len(labelled.test) == 2 + len(FAMILIES)  # no stale files of the first run
    (tmp_path / "brick").mkdir()
    (tmp_path / "brick" / "mine.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not made by zsad.s benchmark generators"):
        make_defect_benchmark(tmp_path, ["brick"], **SMALL)
    assert (tmp_path / "brick" / "mine.txt").read_text() == "keep"
    with pytest.raises(UnknownNameError, match="Known: brick, grass, gravel, tissue, coins, coins_other"):
        make_defect_benchmark(tmp_path, ["bricks"])
    with pytest.raises(ConfigError, match="at least 16"):
        make_defect_benchmark(tmp_path, ["grass"], size=8)


def test_coin_cells_tile_the_photograph_and_hold_a_crop(bench):
    shape = _load_source("coins").shape
    cover = np.zeros(shape, int)
    for y0, y1, x0, x1, cy, cx, _ in coin_cells(shape):
        cover[y0:y1, x0:x1] += 1
        assert y1 - y0 >= COIN_SIDE and x1 - x0 >= COIN_SIDE and y0 <= cy < y1 and x0 <= cx < x1
    assert (cover == 1).all()  # disjoint cells: crops of different coins never share a pixel
    assert sorted(c[6] for c in coin_cells(shape)) == [0] * 12 + [1] * 12




def _level_coded_coins(shape: tuple) -> np.ndarray:
    img = np.zeros(shape[:2], np.uint8)
    for k, (y0, y1, x0, x1, *_rest) in enumerate(coin_cells(shape)):
        img[y0:y1, x0:x1] = 10 + 10 * k
    return img


def test_fit_and_test_crops_come_from_disjoint_source_regions(monkeypatch, tmp_path):
    """The sources replaced by level-coded stand-ins (each block / coin cell flat at its own level): every fit
    image, test image and clean part of a defect image must be flat at a level of its own split's regions."""
    import skimage.data

    levels: dict[str, dict[str, set]] = {}
    for category, spec in CATEGORIES.items():
        real = getattr(skimage.data, spec.source)()
        if spec.kind == "object":
            coded = _level_coded_coins(real.shape)
            cells = coin_cells(real.shape)
            by_parity = {parity: {10 + 10 * k for k, c in enumerate(cells) if c[6] == parity} for parity in (0, 1)}
            # coins: the fit coins in new poses (exchangeable normals); coins_other: the other coins (shifted normals)
            levels[category] = {"train": by_parity[0], "test": by_parity[0 if spec.test_coins == "train" else 1]}
        else:
            coded = level_coded(real.shape)
            train = {10 + 15 * k for k in range(16) if (k // 4 + k % 4) % 2 == 0}
            levels[category] = {"train": train, "test": {10 + 15 * k for k in range(16)} - train}
        monkeypatch.setattr(skimage.data, spec.source, lambda coded=coded: coded)
    make_defect_benchmark(tmp_path, n_train=40, n_test_good=20, n_test_defect_per_family=10)
    for labelled in read_mvtec(tmp_path):
        own = levels[labelled.category]
        seen = {"train": set(), "test": set()}
        for split, path, mask in [("train", p, None) for p in labelled.train] + [("test", i.path, load_mask(i) if i.label else None) for i in labelled.test]:
            pixels = np.asarray(Image.open(path))
            clean = pixels if mask is None else pixels[~mask]
            assert clean.min() == clean.max(), f"{path} left its region"
            seen[split].add(int(clean.flat[0]))
        assert seen["train"] <= own["train"] and seen["test"] <= own["test"], labelled.category
        assert len(seen["train"]) >= 4 and len(seen["test"]) >= 4  # crops spread over many regions


def test_a_benchmark_of_four_categories_is_made_in_seconds(tmp_path):
    for category in ("brick", "grass", "gravel", "coins"):
        _load_source(category)  # scikit-image's first read of a file is not the generator's cost
    start = time.perf_counter()
    summary = make_defect_benchmark(tmp_path, ["brick", "grass", "gravel", "coins"], size=64, n_train=60, n_test_good=20, n_test_defect_per_family=10)
    elapsed = time.perf_counter() - start
    assert sum(c["train"] + c["test_good"] + sum(c["test_defect"].values()) for c in summary["categories"].values()) == 4 * (60 + 20 + 10 * len(FAMILIES))
    assert elapsed < 20, f"{elapsed:.1f} s"  # about 2 s on a laptop core; generous for a loaded CI machine
