"""Labelled layouts (zsad/data/layouts.py): MVTec AD's tree, VisA's split CSV and anomalib-style folders, their masks,
and the errors a user can cause, on tiny fixtures that use the datasets' real folder and file names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import write_visa_layout
from PIL import Image

from zsad.data.layouts import LabelledItem, check_masks, load_mask, parse_data_spec, read_folder, read_mvtec, read_visa
from zsad.errors import ConfigError, DataLeakageError, DatasetNotFoundError, UnknownNameError, ZsadError


def _png(path: Path, size: tuple[int, int] = (8, 8), value: int = 128, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode != "RGB" else (value, value, value)).save(path)
    return path


def _mask(path: Path, size: tuple[int, int] = (8, 8), box: tuple[int, int, int, int] = (2, 2, 5, 5), on: int = 255) -> Path:
    arr = np.zeros(size[::-1], np.uint8)
    arr[box[1] : box[3], box[0] : box[2]] = on
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "L").save(path)
    return path


def _mvtec(root: Path, category: str = "bottle", defects: dict | None = None, n_train: int = 3, n_good: int = 2, masks: bool = True) -> Path:
    """A category in MVTec AD's layout: train/good, test/good, test/<defect>, ground_truth/<defect>/NNN_mask.png."""
    folder = root / category
    for i in range(n_train):
        _png(folder / "train" / "good" / f"{i:03d}.png")
    for i in range(n_good):
        _png(folder / "test" / "good" / f"{i:03d}.png")
    for defect, n in (defects or {"broken_large": 2, "contamination": 1}).items():
        for i in range(n):
            _png(folder / "test" / defect / f"{i:03d}.png", value=30)
            if masks:
                _mask(folder / "ground_truth" / defect / f"{i:03d}_mask.png")
    return folder


def test_mvtec_category_items_labels_and_masks(tmp_path):
    folder = _mvtec(tmp_path)
    (labelled,) = read_mvtec(tmp_path, "bottle")
    assert labelled.category == "bottle" and labelled.has_masks and labelled.notes == []
    assert labelled.train == [folder / "train" / "good" / f"{i:03d}.png" for i in range(3)]
    by_name = {item.name: item for item in labelled.test}
    assert sorted(by_name) == ["test/broken_large/000.png", "test/broken_large/001.png", "test/contamination/000.png", "test/good/000.png", "test/good/001.png"]
    good = by_name["test/good/000.png"]
    assert (good.label, good.mask, good.defect) == (0, None, "good")
    broken = by_name["test/broken_large/001.png"]
    gt = folder / "ground_truth" / "broken_large" / "001_mask.png"
    assert broken == LabelledItem(folder / "test" / "broken_large" / "001.png", 1, gt, "broken_large", "test/broken_large/001.png")
    # the root may also be the category folder itself
    (direct,) = read_mvtec(folder)
    assert direct.category == "bottle" and direct.test == labelled.test and direct.train == labelled.train
    mask = load_mask(broken)
    assert mask.dtype == bool and mask.shape == (8, 8) and mask.sum() == 9 and mask[2:5, 2:5].all()
    assert not load_mask(good).any()


def test_mvtec_without_category_reads_every_category_sorted(tmp_path):
    _mvtec(tmp_path, "screw", {"scratch_head": 1})
    _mvtec(tmp_path, "bottle")
    (tmp_path / "license").mkdir()  # extra folders in an extracted archive are not categories
    (tmp_path / "readme.txt").write_text("MVTec AD")
    sets = read_mvtec(tmp_path)
    assert [s.category for s in sets] == ["bottle", "screw"]
    assert {i.defect for i in sets[1].test} == {"good", "scratch_head"}


def test_a_missing_mask_is_named_with_the_expected_paths(tmp_path):
    folder = _mvtec(tmp_path)
    (folder / "ground_truth" / "broken_large" / "001_mask.png").unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        read_mvtec(tmp_path, "bottle")
    msg = str(err.value)
    assert str(folder / "test" / "broken_large" / "001.png") in msg
    assert str(folder / "ground_truth" / "broken_large" / "001_mask.png") in msg and "ground_truth/" in msg


def test_an_empty_category_lists_the_valid_ones(tmp_path):
    _mvtec(tmp_path, "bottle")
    _mvtec(tmp_path, "carpet")
    empty = tmp_path / "cable"
    (empty / "train" / "good").mkdir(parents=True)
    (empty / "test" / "good").mkdir(parents=True)
    _png(empty / "train" / "good" / "._000.png")  # a macOS resource fork is not an image
    for category in ("cable", None):
        with pytest.raises(DatasetNotFoundError) as err:
            read_mvtec(tmp_path, category)
        assert "'cable' is empty" in str(err.value) and "train/good" in str(err.value) and "bottle, carpet" in str(err.value)
    _png(empty / "train" / "good" / "000.png")  # train images but no test images: still empty
    with pytest.raises(DatasetNotFoundError, match="no images in .*test.*bottle, carpet"):
        read_mvtec(tmp_path, "cable")
    with pytest.raises(UnknownNameError, match="Did you mean bottle") as err:
        read_mvtec(tmp_path, "botle")
    assert "bottle, carpet" in str(err.value)


def test_a_root_that_is_not_mvtec_shaped_says_what_was_expected(tmp_path):
    (tmp_path / "images").mkdir()
    _png(tmp_path / "images" / "a.png")
    with pytest.raises(DatasetNotFoundError) as err:
        read_mvtec(tmp_path)
    msg = str(err.value)
    assert "train/good/" in msg and "test/<good|defect>/" in msg and "ground_truth/<defect>/" in msg and "images/" in msg
    with pytest.raises(DatasetNotFoundError, match="not a folder"):
        read_mvtec(tmp_path / "nowhere")


def test_mask_size_mismatch_is_resized_with_nearest_and_counted(tmp_path):
    folder = _mvtec(tmp_path, defects={"crack": 2})
    # a 16×16 mask for an 8×8 image, with a single-pixel-wide stripe that bilinear resizing would smear
    arr = np.zeros((16, 16), np.uint8)
    arr[:, 4:8] = 255
    Image.fromarray(arr, "L").save(folder / "ground_truth" / "crack" / "000_mask.png")
    (labelled,) = read_mvtec(tmp_path)
    assert check_masks(labelled) == {"checked": 2, "resized": 1, "missing": []}
    assert any("1 mask(s) differ in size" in note and "nearest" in note for note in labelled.notes)
    item = next(i for i in labelled.test if i.name == "test/crack/000.png")
    mask = load_mask(item)
    expected = np.asarray(Image.fromarray(arr, "L").resize((8, 8), Image.NEAREST)) > 0
    assert mask.shape == (8, 8) and np.array_equal(mask, expected) and mask[:, 2:4].all() and mask.sum() == 16
    assert load_mask(item, (4, 6)).shape == (6, 4)  # size is (width, height), as PIL's


def test_masks_are_binarised_any_value_above_zero(tmp_path):
    folder = _mvtec(tmp_path, defects={"crack": 1})
    arr = np.array([[0, 1, 128, 255]] * 8 * 2, np.uint8).reshape(8, 8)
    Image.fromarray(arr, "L").save(folder / "ground_truth" / "crack" / "000_mask.png")
    item = next(i for i in read_mvtec(tmp_path)[0].test if i.label)
    assert np.array_equal(load_mask(item), arr > 0)
    Image.fromarray(np.stack([arr, arr * 0, arr * 0, np.full_like(arr, 255)], -1), "RGBA").save(folder / "ground_truth" / "crack" / "000_mask.png")
    assert np.array_equal(load_mask(item), arr > 0)  # the alpha channel does not mark pixels


def test_a_category_without_ground_truth_has_image_labels_only(tmp_path):
    _mvtec(tmp_path, masks=False)
    (labelled,) = read_mvtec(tmp_path)
    assert not labelled.has_masks and all(i.mask is None for i in labelled.test)
    assert any("image-level metrics only" in n for n in labelled.notes)
    assert check_masks(labelled) == {"checked": 0, "resized": 0, "missing": []}
    with pytest.raises(ValueError, match="has_masks"):
        load_mask(next(i for i in labelled.test if i.label))


def _folder(tmp_path: Path, n_normal: int = 40) -> dict[str, Path]:
    dirs = {k: tmp_path / k for k in ("good", "bad", "masks", "good_test")}
    for i in range(n_normal):
        _png(dirs["good"] / f"n{i:03d}.png")
    _png(dirs["bad"] / "a.png", value=10)
    _png(dirs["bad"] / "b.png", value=10)
    _png(dirs["bad"] / "dent" / "c.png", value=10)  # a sub-folder names the defect type
    _mask(dirs["masks"] / "a.png")
    _mask(dirs["masks"] / "b_mask.png", box=(0, 0, 1, 1), on=1)
    _mask(dirs["masks"] / "dent" / "c_mask.png")
    for i in range(3):
        _png(dirs["good_test"] / f"t{i}.png")
    return dirs


def test_folder_layout_with_normal_test_dir_and_masks(tmp_path):
    d = _folder(tmp_path)
    labelled = read_folder(d["good"], d["bad"], d["masks"], d["good_test"])
    assert labelled.category == tmp_path.name and labelled.has_masks
    assert labelled.train == sorted(d["good"].glob("*.png"))
    by_name = {i.name: i for i in labelled.test}
    assert sorted(by_name) == ["abnormal/a.png", "abnormal/b.png", "abnormal/dent/c.png", "normal_test/t0.png", "normal_test/t1.png", "normal_test/t2.png"]
    assert by_name["abnormal/a.png"].mask == d["masks"] / "a.png" and by_name["abnormal/a.png"].defect == "bad"
    assert by_name["abnormal/b.png"].mask == d["masks"] / "b_mask.png"
    assert by_name["abnormal/dent/c.png"].mask == d["masks"] / "dent" / "c_mask.png" and by_name["abnormal/dent/c.png"].defect == "dent"
    assert load_mask(by_name["abnormal/b.png"]).sum() == 1  # a 0/1 mask counts too
    assert all((i.label, i.mask, i.defect) == (0, None, "good") for n, i in by_name.items() if n.startswith("normal_test/"))
    (d["masks"] / "b_mask.png").unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        read_folder(d["good"], d["bad"], d["masks"], d["good_test"])
    assert str(d["bad"] / "b.png") in str(err.value) and str(d["masks"] / "b_mask.png") in str(err.value)


def test_folder_layout_holds_out_a_stable_hashed_share_of_the_normal_images(tmp_path):
    from zsad.data.layouts import _hash_fraction
    from zsad.data.registry import _hash_fraction as registry_hash

    d = _folder(tmp_path, n_normal=60)
    first = read_folder(d["good"], d["bad"])
    second = read_folder(d["good"], d["bad"], test_fraction=0.2)
    held = [i.path for i in first.test if i.label == 0]
    assert held == [i.path for i in second.test if i.label == 0] and first.train == second.train  # stable
    assert not set(held) & set(first.train) and sorted(held + first.train) == sorted(d["good"].glob("*.png"))  # disjoint, complete
    assert 3 <= len(held) <= 25
    assert all(_hash_fraction(p.name) < 0.2 for p in held) and all(_hash_fraction(p.name) >= 0.2 for p in first.train)
    assert all(_hash_fraction(n) == registry_hash(n) for n in ("a.png", "x/y.png"))  # the flat folders' rule
    assert not first.has_masks and all(i.mask is None for i in first.test)
    assert any(f"{len(held)} of the 60 normal images" in n and "neither to fit nor to calibrate" in n for n in first.notes)
    assert any("image-level metrics only" in n for n in first.notes)
    # a larger share keeps every image held out before (each file's side depends on its name alone)
    more = [i.path for i in read_folder(d["good"], d["bad"], test_fraction=0.5).test if i.label == 0]
    assert set(held) <= set(more)
    with pytest.raises(ConfigError, match="test_fraction"):
        read_folder(d["good"], d["bad"], test_fraction=1.0)


def test_folder_layout_refuses_overlapping_and_missing_folders(tmp_path):
    d = _folder(tmp_path)
    with pytest.raises(DataLeakageError):
        read_folder(d["good"], d["bad"], normal_test_dir=d["good"])
    with pytest.raises(DataLeakageError):
        read_folder(tmp_path, d["bad"], normal_test_dir=d["good_test"])  # the abnormal images lie inside the normal folder
    with pytest.raises(DatasetNotFoundError, match="abnormal_dir .* is not a folder"):
        read_folder(d["good"], tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no images"):
        read_folder(d["good"], tmp_path / "empty")


def test_parse_data_spec_both_forms_and_bad_specs(tmp_path):
    _mvtec(tmp_path / "mvtec", "bottle")
    _mvtec(tmp_path / "mvtec", "screw")
    assert [s.category for s in parse_data_spec(f"mvtec:{tmp_path / 'mvtec'}")] == ["bottle", "screw"]
    assert [s.category for s in parse_data_spec(f"mvtec:{tmp_path / 'mvtec' / 'screw'}")] == ["screw"]
    with pytest.raises(UnknownNameError, match="Did you mean screw.*Valid categories: bottle, screw"):
        parse_data_spec(f"mvtec:{tmp_path / 'mvtec' / 'screws'}")
    d = _folder(tmp_path / "f")
    (plain,) = parse_data_spec(f"folder:{d['good']},{d['bad']}")
    assert not plain.has_masks and plain.train == read_folder(d["good"], d["bad"]).train
    (masked,) = parse_data_spec(f"folder:{d['good']},{d['bad']},{d['masks']}")
    assert masked.has_masks and sum(i.label for i in masked.test) == 3
    (full,) = parse_data_spec(f"folder:{d['good']}, {d['bad']}, mask={d['masks']}, normal_test={d['good_test']}, name=widget")
    assert full.category == "widget" and full.has_masks and len(full.train) == 40 and sum(1 - i.label for i in full.test) == 3
    for bad in ("nonsense", "mvtec:", f"folder:{d['good']}", "folder:a,b,c,d", "folder:a,b,colour=red", "visa2:/data"):
        with pytest.raises(ZsadError) as err:
            parse_data_spec(bad)
        assert isinstance(err.value, (ConfigError, UnknownNameError))
        if not bad.startswith("folder"):
            assert "mvtec:ROOT[/CATEGORY]" in str(err.value) and "folder:NORMAL_DIR,ABNORMAL_DIR[,MASK_DIR]" in str(err.value)
        else:
            assert "folder:NORMAL_DIR,ABNORMAL_DIR[,MASK_DIR]" in str(err.value)


def _visa(root: Path, category: str = "candle", n_train: int = 3, n_good: int = 2, n_bad: int = 2) -> Path:
    """One category in VisA's own layout (JPEG images, PNG masks with VisA's non-255 label values, split_csv/1cls.csv)."""
    grey = lambda v: Image.new("RGB", (10, 8), (v, v, v))
    mask = np.zeros((8, 10), np.uint8)
    mask[2:5, 3:7] = 1  # VisA's masks mark defects with small label values, not 255
    write_visa_layout(root, category, [(f"{i:04d}", grey(120)) for i in range(n_train)], [(f"{100 + i:04d}", grey(130)) for i in range(n_good)],
                      [(f"{i:03d}", grey(40), Image.fromarray(mask, "L")) for i in range(n_bad)])
    return root


def test_visa_split_csv_is_read_in_place(tmp_path):
    """VisA as it ships: the split file divides the normal images into fit and test; anomalies are "bad" with their masks."""
    root = _visa(tmp_path / "visa")
    (visa,) = read_visa(root, "candle")
    assert visa.category == "candle" and visa.has_masks and visa.notes == []
    assert [p.name for p in visa.train] == ["0000.JPG", "0001.JPG", "0002.JPG"]
    assert [(i.name, i.label, i.defect, i.mask.name if i.mask else None) for i in visa.test] == [
        ("Data/Images/Anomaly/000.JPG", 1, "bad", "000.png"), ("Data/Images/Anomaly/001.JPG", 1, "bad", "001.png"),
        ("Data/Images/Normal/0100.JPG", 0, "good", None), ("Data/Images/Normal/0101.JPG", 0, "good", None)]
    assert load_mask(visa.test[0]).sum() == 12 and not load_mask(visa.test[2]).any()
    assert check_masks(visa) == {"checked": 2, "resized": 0, "missing": []}


def test_visa_every_category_and_the_spec_forms(tmp_path):
    root = _visa(tmp_path / "visa")
    _visa(root, "pcb1", n_train=2, n_good=1, n_bad=1)
    assert [s.category for s in read_visa(root)] == ["candle", "pcb1"]
    assert [s.category for s in parse_data_spec(f"visa:{root}")] == ["candle", "pcb1"]
    (pcb,) = parse_data_spec(f"visa:{root / 'pcb1'}")
    assert pcb.category == "pcb1" and len(pcb.train) == 2 and [i.label for i in pcb.test] == [1, 0]
    with pytest.raises(UnknownNameError, match="no category 'candel'. Did you mean candle.*Categories: candle, pcb1"):
        parse_data_spec(f"visa:{root / 'candel'}")


def test_visa_errors_name_the_file_and_what_to_do(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="no split file .*split_csv/1cls.csv.*holds split_csv/"):
        read_visa(_mvtec(tmp_path / "mvtec").parent)
    root = _visa(tmp_path / "absent")
    (root / "candle" / "Data" / "Images" / "Normal" / "0001.JPG").unlink()
    with pytest.raises(DatasetNotFoundError, match="1 image.*not on disk.*candle/Data/Images/Normal/0001.JPG.*Re-extract"):
        read_visa(root)
    root = _visa(tmp_path / "nomask")
    (root / "candle" / "Data" / "Masks" / "Anomaly" / "001.png").unlink()
    with pytest.raises(DatasetNotFoundError, match="1 defect image.*no ground-truth mask.*001.JPG.*Masks/Anomaly"):
        read_visa(root)
    root = _visa(tmp_path / "leak")
    csv_file = root / "split_csv" / "1cls.csv"
    anomaly = "anomaly,candle/Data/Images/Anomaly/000.JPG"
    csv_file.write_text(csv_file.read_text().replace(f"candle,test,{anomaly}", f"candle,train,{anomaly}"))
    with pytest.raises(DataLeakageError, match="anomalous image candle/Data/Images/Anomaly/000.JPG for training"):
        read_visa(root)
    root = _visa(tmp_path / "twice")
    csv_file = root / "split_csv" / "1cls.csv"
    csv_file.write_text(csv_file.read_text() + "candle,test,normal,candle/Data/Images/Normal/0000.JPG,\n")
    with pytest.raises(DataLeakageError, match="1 image.*both training and test.*0000.JPG"):
        read_visa(root)
    csv_file.write_text("object,split,image\ncandle,train,x.JPG\n")
    with pytest.raises(DatasetNotFoundError, match="lacks the column.*label, mask"):
        read_visa(root)


def test_visa_split_file_as_spreadsheets_and_windows_write_it(tmp_path):
    """A byte-order mark, padded headers, backslash paths and blank rows read as VisA's own file does."""
    root = _visa(tmp_path / "visa")
    (expected,) = read_visa(root)
    csv_file = root / "split_csv" / "1cls.csv"
    lines = csv_file.read_text().splitlines()
    header = ", ".join(lines[0].split(","))
    rows = [line.replace("/", "\\") for line in lines[1:]]
    csv_file.write_bytes(("\ufeff" + "\r\n".join([header, *rows, ",,,,", ""])).encode("utf-8"))
    (read,) = read_visa(root)
    assert read.train == expected.train and [(i.path, i.label, i.mask) for i in read.test] == [(i.path, i.label, i.mask) for i in expected.test]
