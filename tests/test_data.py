"""Datasets: preprocessing of docs/method.md §2, layouts, conversions, and the errors a user can cause."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import level_coded
from omegaconf import OmegaConf
from PIL import Image

from zsad.config.schema import DataConfig
from zsad.data import BUILTIN_NAMES, CorruptImageError, DatasetNotFoundError, build_dataset, make_builtin
from zsad.errors import ConfigError, UnknownNameError


def cfg(**kw):
    return OmegaConf.structured(DataConfig(**kw))


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_builtin_sets_are_deterministic_and_split(name):
    a, b = make_builtin(name, "train", 20), make_builtin(name, "train", 20)
    assert a.dtype == np.uint8 and np.array_equal(a, b)
    test = make_builtin(name, "test", 20)
    assert not np.array_equal(a[: len(test)], test[: len(a)])
    ds = build_dataset(cfg(name=name, split="train", image_size=16, options={"count": 20}))
    x, i = ds[3]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and i == 3
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_block_crops_of_the_two_splits_never_share_a_pixel():
    """Each 4×4 block of the source has its own grey level: a crop that stays inside one block is flat
    at that level, and the fit (train) levels and the test levels are disjoint."""
    from zsad.data.package_images import GRID, block_crops

    levels = (np.arange(GRID * GRID).reshape(GRID, GRID) * 15 + 10).astype(np.uint8)
    source = np.kron(levels, np.ones((40, 40), np.uint8))  # 160×160, blocks of 40 px
    rng = np.random.default_rng(0)
    seen = {}
    for split in ("train", "test"):
        crops = block_crops([source], 300, rng, split, size=16, min_side=8, max_side=64, mode="L")
        assert crops.shape == (300, 16, 16, 1)
        assert all(c.min() == c.max() for c in crops), "a crop left its block"
        seen[split] = {int(c[0, 0, 0]) for c in crops}
    train_levels = {int(levels[i, j]) for i in range(GRID) for j in range(GRID) if (i + j) % 2 == 0}
    assert seen["train"] == train_levels and seen["test"] == set(levels.flat) - train_levels




@pytest.mark.parametrize("name", ["photos", "scenes", "materials", "cells", "documents", "space"])
def test_real_photograph_sets_take_each_split_from_its_own_blocks(name, monkeypatch):
    """The real sets' sources replaced by level-coded images of the same shapes: every crop must be flat at
    the level of a block of its own split's parity, so fit and test crops can never share a pixel."""
    import skimage.data
    import sklearn.datasets

    from zsad.data import package_images

    class Coded:
        def __getattr__(self, attr):
            real = getattr(skimage.data, attr)
            return lambda: (lambda out: [level_coded(o.shape) for o in out] if isinstance(out, tuple) else level_coded(out.shape))(real())

    monkeypatch.setattr(package_images, "_skimage", lambda: Coded())
    real_photos = sklearn.datasets.load_sample_images
    monkeypatch.setattr(sklearn.datasets, "load_sample_images",
                        lambda: type("Bunch", (), {"images": [level_coded(i.shape) for i in real_photos().images]})())
    parity = {"train": {10 + 15 * k for k in range(16) if (k // 4 + k % 4) % 2 == 0}}
    parity["test"] = {10 + 15 * k for k in range(16)} - parity["train"]
    for split in ("train", "test"):
        crops = make_builtin(name, split, 200)
        assert all(c.min() == c.max() for c in crops), "a crop left its block"
        assert {int(c.flat[0]) for c in crops} <= parity[split]


@pytest.mark.parametrize("name", ["photos", "scenes", "materials", "cells", "documents", "space", "faces"])
def test_package_image_sets_are_real_and_share_no_image_between_splits(name):
    fit, test = make_builtin(name, "train", 300), make_builtin(name, "test", 300)
    hashes = lambda a: {x.tobytes() for x in a}  # noqa: E731
    assert not hashes(fit) & hashes(test)
    assert fit.std() > 10 and test.std() > 10  # real content, not blank crops
    if name == "faces":  # 60 fit faces and their mirrors; 40 other test faces, no mirrors
        assert (len(fit), len(test)) == (120, 80 // 2) and len(hashes(fit)) == 120
        assert not hashes(fit[:, :, ::-1]) & hashes(test)


def _write_celeba(root, layout: str, n: int = 6):
    img_dir = root / "img_align_celeba" / ("img_align_celeba" if layout == "kaggle" else "")
    img_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(img_dir / name, quality=95)
    parts = [0, 0, 0, 1, 2, 2]
    if layout == "kaggle":
        (root / "list_eval_partition.csv").write_text("image_id,partition\n" + "".join(f"{a},{p}\n" for a, p in zip(names, parts)))
    else:
        (root / "list_eval_partition.txt").write_text("".join(f"{a} {p}\n" for a, p in zip(names, parts)))
    return img_dir, names


@pytest.mark.parametrize("layout", ["kaggle", "torchvision"])
def test_celeba_layouts_and_center_crop_resize(tmp_path, layout):
    root = tmp_path / "celeba_root"
    base = root if layout == "kaggle" else root / "celeba"
    img_dir, names = _write_celeba(base, layout)
    train = build_dataset(cfg(name="celeba", root=str(root), split="train", image_size=32))
    test = build_dataset(cfg(name="celeba", root=str(root), split="test", image_size=32))
    assert len(train) == 3 and len(test) == 2
    # Independent reference: rows 39..178, cols 19..158 (docs/improved_diffusion_format.md §7), bilinear resize, then 2p-1.
    pil = Image.open(img_dir / names[4]).convert("RGB")
    crop = pil.crop((19, 39, 19 + 140, 39 + 140)).resize((32, 32), Image.BILINEAR)
    expected = torch.from_numpy(np.asarray(crop, np.float32) / 255.0).permute(2, 0, 1) * 2 - 1
    x, index = test[0]
    assert index == 0
    assert torch.allclose(x, expected, atol=1e-6)


def test_other_datasets_resize_without_crop_and_convert_modes(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (37, 23), dtype=np.uint8), "L").save(folder / "a_gray.png")
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "b_rgba.png")
    Image.fromarray((rng.integers(0, 65535, (16, 16))).astype(np.uint16)).save(folder / "c_gray16.png")
    ds = build_dataset(cfg(name="imagefolder", root=str(folder), split="all", image_size=8))
    assert len(ds) == 3
    gray, _ = ds[0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2]), "grayscale must be repeated to 3 channels"
    color, _ = ds[1]
    composited = np.round(rgba[..., :3] * (rgba[..., 3:] / 255.0)).astype(np.uint8)  # alpha over black (transforms.BACKGROUND)
    expected = Image.fromarray(composited).resize((8, 8), Image.BILINEAR)
    assert torch.allclose(color, torch.from_numpy(np.asarray(expected, np.float32) / 127.5 - 1).permute(2, 0, 1), atol=1e-6)
    g16, _ = ds[2]
    assert g16.shape == (3, 8, 8) and float(g16.max()) > 0.0, "16-bit grayscale must be scaled, not clipped"


def test_missing_datasets_say_where_they_looked(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="CelebA not found.*list_eval_partition.*data.download=true"):
        build_dataset(cfg(name="celeba", root=str(tmp_path)))
    with pytest.raises(DatasetNotFoundError, match=r"cifar10 \(test\) not found.*data.download=true"):
        build_dataset(cfg(name="cifar10", root=str(tmp_path), split="test"))
    with pytest.raises(DatasetNotFoundError, match="svhn"):
        build_dataset(cfg(name="svhn", root=str(tmp_path), split="test"))
    with pytest.raises(DatasetNotFoundError, match="no images"):
        build_dataset(cfg(name="imagefolder", root=str(tmp_path)))
    with pytest.raises(UnknownNameError, match="Did you mean cifar10"):
        build_dataset(cfg(name="cifar1O"))


def test_corrupt_and_truncated_images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / "a.jpg")
    good = (folder / "a.jpg").read_bytes()
    (folder / "b_truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "c_garbage.png").write_bytes(b"not an image")
    ds = build_dataset(cfg(name="imagefolder", root=str(folder), split="all", image_size=8))
    ds[0]
    with pytest.raises(CorruptImageError, match="b_truncated.jpg.*skip_corrupt"):
        ds[1]
    with pytest.warns(UserWarning, match="skipped 2 unreadable image"):
        kept = build_dataset(cfg(name="imagefolder", root=str(folder), split="all", image_size=8, skip_corrupt=True))
    assert len(kept) == 1 and kept[0][1] == 0


def test_max_images_keeps_a_prefix_with_original_indices():
    ds = build_dataset(cfg(name="shapes", split="test", image_size=8, max_images=5, options={"count": 9}))
    assert len(ds) == 5 and [ds[i][1] for i in range(5)] == list(range(5))
    assert ds.fingerprint() != build_dataset(cfg(name="shapes", split="test", image_size=8, options={"count": 9})).fingerprint()


def _png_folder(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6, 6, 3), (7 * i) % 256, np.uint8)).save(folder / name)


def test_flat_folder_is_split_by_hashed_file_name(tmp_path):
    names = [f"img_{i:03d}.png" for i in range(60)] + ["sub/a.png", "sub/b.png"]
    _png_folder(tmp_path / "flat", names)
    fit = build_dataset(cfg(name="imagefolder", root=str(tmp_path / "flat"), split="train", image_size=8))
    test = build_dataset(cfg(name="imagefolder", root=str(tmp_path / "flat"), split="test", image_size=8))
    fit_files, test_files = set(map(str, fit.source.files)), set(map(str, test.source.files))
    assert not fit_files & test_files, "ID-fit and ID-test must not share a file"
    assert len(fit_files | test_files) == len(names) and 15 < len(fit_files) < 45
    assert "split by hashed file name" in fit.notes[0] and "fit_fraction=0.5" in fit.notes[0]
    # Deterministic, and a file keeps its side when others are added.
    _png_folder(tmp_path / "flat", [f"new_{i}.png" for i in range(10)])
    again = build_dataset(cfg(name="imagefolder", root=str(tmp_path / "flat"), split="train", image_size=8))
    assert fit_files <= set(map(str, again.source.files))
    most = build_dataset(cfg(name="imagefolder", root=str(tmp_path / "flat"), split="train", image_size=8, options={"fit_fraction": 0.9}))
    assert len(most) > len(again)
    assert len(build_dataset(cfg(name="imagefolder", root=str(tmp_path / "flat"), split="all", image_size=8))) == len(names) + 10
    # Training the base model reads every image of a flat folder.
    from zsad.data import build_training_dataset

    assert len(build_training_dataset(cfg(name="imagefolder", root=str(tmp_path / "flat"), split="train", image_size=8))) == len(names) + 10


def test_unknown_split_names_list_the_valid_ones(tmp_path):
    _png_folder(tmp_path / "flat", ["a.png", "b.png"])
    with pytest.raises(ConfigError, match="unknown split 'valid'.*Valid splits: train, test, all"):
        build_dataset(cfg(name="imagefolder", root=str(tmp_path / "flat"), split="valid"))
    _png_folder(tmp_path / "split" / "train", ["a.png"])
    _png_folder(tmp_path / "split" / "test", ["b.png"])
    with pytest.raises(ConfigError, match="no 'val/' folder. Valid splits here: train, test, all"):
        build_dataset(cfg(name="imagefolder", root=str(tmp_path / "split"), split="val"))
    assert [f.name for f in build_dataset(cfg(name="imagefolder", root=str(tmp_path / "split"), split="test")).source.files] == ["b.png"]
    with pytest.raises(ConfigError, match="cifar10: unknown split 'val'. Valid splits: train, test"):
        build_dataset(cfg(name="cifar10", root=str(tmp_path), split="val"))
    with pytest.raises(ConfigError, match="splits 'train' and 'test', not 'valid'"):
        build_dataset(cfg(name="digits", split="valid"))


def test_file_identity_changes_with_root_size_and_mtime(tmp_path):
    import os
    import shutil

    _png_folder(tmp_path / "a" / "test", ["x.png", "y.png"])
    ds = lambda root: build_dataset(cfg(name="imagefolder", root=str(root), split="test", image_size=8))  # noqa: E731
    first = ds(tmp_path / "a").fingerprint()
    assert ds(tmp_path / "a").fingerprint() == first
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    os.utime(tmp_path / "b" / "test" / "x.png", ns=(os.stat(tmp_path / "a" / "test" / "x.png").st_atime_ns,
                                                    os.stat(tmp_path / "a" / "test" / "x.png").st_mtime_ns))
    os.utime(tmp_path / "b" / "test" / "y.png", ns=(os.stat(tmp_path / "a" / "test" / "y.png").st_atime_ns,
                                                    os.stat(tmp_path / "a" / "test" / "y.png").st_mtime_ns))
    assert ds(tmp_path / "b").fingerprint() != first, "another root is another dataset"
    st = os.stat(tmp_path / "a" / "test" / "x.png")
    os.utime(tmp_path / "a" / "test" / "x.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert ds(tmp_path / "a").fingerprint() != first, "an edited file changes the identity"
