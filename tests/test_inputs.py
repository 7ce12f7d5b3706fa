"""Inputs as they come from cameras (design §7 "Inputs"): bit depth by one rule per run, alpha on a stated
background, 16-bit colour PNGs read losslessly, overlays converted as the network input, tiny-image notes."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from zsad.data.base import FileSource, image_from_samples, open_image
from zsad.data.transforms import BACKGROUND, SAMPLES, build_transform, decide_bit_depth, samples_of, to_rgb
from zsad.errors import ConfigError

ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]  # x0, y0, dx, dy


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _filtered_rows(sub: np.ndarray, bpp: int) -> bytes:
    """Rows of big-endian 16-bit samples, each with a PNG filter of its own (all five kinds in turn)."""
    rows = [np.frombuffer(r.astype(">u2").tobytes(), np.uint8).astype(np.int64) for r in sub]
    out, prev = b"", np.zeros_like(rows[0])
    for y, x in enumerate(rows):
        kind = y % 5
        a = np.concatenate([np.zeros(bpp, np.int64), x[:-bpp]])
        c = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        predictor = [np.zeros_like(x), a, prev, (a + prev) // 2, _paeth(a, prev, c)][kind]
        out += bytes([kind]) + ((x - predictor) % 256).astype(np.uint8).tobytes()
        prev = x
    return out


def write_png16(path, samples: np.ndarray, interlaced: bool = False) -> None:
    """A 16-bit PNG (gray, gray+alpha, RGB or RGBA) written by hand: PIL cannot write 16-bit colour."""
    samples = np.asarray(samples, np.uint16)
    samples = samples[..., None] if samples.ndim == 2 else samples
    h, w, ch = samples.shape
    passes = ADAM7 if interlaced else [(0, 0, 1, 1)]
    raw = b"".join(_filtered_rows(samples[y0::dy, x0::dx], 2 * ch) for x0, y0, dx, dy in passes if samples[y0::dy, x0::dx].size)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[ch], 0, 0, int(interlaced))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _tensor(img: Image.Image, size=(8, 10), bit_depth=None) -> torch.Tensor:
    return build_transform(size, bit_depth=bit_depth)(img)


@pytest.fixture
def rgb8():
    return np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)


@pytest.mark.parametrize("channels", [2, 3, 4])
@pytest.mark.parametrize("interlaced", [False, True])
def test_16_bit_colour_png_is_read_losslessly(tmp_path, channels, interlaced):
    """Pillow 13 decodes 16-bit RGB(A) and gray+alpha PNGs to 8 bits (the high bytes); `open_image` keeps all 16."""
    samples = np.random.default_rng(channels).integers(0, 65536, (13, 11, channels), dtype=np.uint16)
    write_png16(tmp_path / "x.png", samples, interlaced)
    with Image.open(tmp_path / "x.png") as plain:
        assert np.asarray(plain).dtype == np.uint8  # what PIL alone gives: 8 of the 16 bits
        assert np.array_equal(np.asarray(plain)[..., 0], (samples[..., 0] >> 8).astype(np.uint8))
    img = open_image(tmp_path / "x.png")
    held, kind = samples_of(img)
    assert kind == "wide" and np.array_equal(held, samples)
    assert FileSource([tmp_path / "x.png"]).load(0).info[SAMPLES].dtype == np.uint16


def test_16_bit_twin_of_an_8_bit_image_gives_the_same_tensor(tmp_path, rgb8):
    """x·257 in 16 bits (gray "I;16" and RGB) is x in 8 bits: identical tensors after a resize to a (height, width)."""
    write_png16(tmp_path / "rgb16.png", rgb8.astype(np.uint16) * 257)
    Image.fromarray(rgb8[..., 0].astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    files = [tmp_path / "rgb16.png", tmp_path / "gray16.png"]
    assert decide_bit_depth(files) == 16
    assert Image.open(files[1]).mode == "I;16"
    rgb, gray = (_tensor(open_image(f), bit_depth=16) for f in files)
    assert rgb.shape == (3, 8, 10)
    assert torch.equal(rgb, _tensor(Image.fromarray(rgb8)))
    assert torch.equal(gray, _tensor(Image.fromarray(rgb8[..., 0])))


def test_12_bit_twin_gives_the_same_tensor_and_white_is_4095(tmp_path, rgb8):
    """Bit depth B keeps the top 8 bits, so 2^B − 1 is white: the rescaled 12-bit twin of x, round(x·4095/255), and the
    left-shifted one, x·16 (at most 4080), both read back as x exactly."""
    twin = np.round(rgb8.astype(np.float64) * 4095 / 255).astype(np.uint16)
    write_png16(tmp_path / "twin.png", twin)
    Image.fromarray(twin[..., 1]).save(tmp_path / "twin_gray.png")
    assert decide_bit_depth([tmp_path / "twin.png", tmp_path / "twin_gray.png"]) == 12
    assert torch.equal(_tensor(open_image(tmp_path / "twin.png"), bit_depth=12), _tensor(Image.fromarray(rgb8)))
    assert torch.equal(_tensor(open_image(tmp_path / "twin_gray.png"), bit_depth=12), _tensor(Image.fromarray(rgb8[..., 1])))
    shifted = image_from_samples(rgb8.astype(np.uint16) * 16)
    assert decide_bit_depth([shifted]) == 12
    assert np.array_equal(np.asarray(to_rgb(shifted, 12)), rgb8)
    assert np.array_equal(np.asarray(to_rgb(image_from_samples(np.full((2, 2, 3), 4095, np.uint16)), 12)), np.full((2, 2, 3), 255, np.uint8))


def test_one_rule_per_run_not_per_image():
    """The old rule divided an image by 257 only when its own maximum exceeded 255: the same stored value 200 came
    out as 200 in one image and as 1 in another. With one bit depth for the run it comes out the same in both."""

    def old_rule(img: Image.Image) -> np.ndarray:
        arr = np.asarray(img, dtype=np.float64)
        return np.clip(arr / (257.0 if arr.max() > 255 else 1.0), 0, 255).astype(np.uint8)

    dark = np.full((4, 4), 200, np.uint16)
    bright = dark.copy()
    bright[0, 0] = 1000
    a, b = Image.fromarray(dark), Image.fromarray(bright)
    assert old_rule(a)[2, 2] != old_rule(b)[2, 2]
    depth = decide_bit_depth([a, b])
    assert depth == 10
    assert np.asarray(to_rgb(a, depth))[2, 2, 0] == np.asarray(to_rgb(b, depth))[2, 2, 0] == round(200 * 255 / 1023)


@pytest.mark.parametrize(("largest", "depth"), [(0, 8), (255, 8), (256, 10), (1023, 10), (1024, 12), (4095, 12), (4096, 14), (16383, 14), (16384, 16),
                                                (65535, 16)])
def test_bit_depth_is_the_smallest_that_holds_the_fit_images(largest, depth):
    imgs = [Image.fromarray(np.array([[0, 7]], np.uint16)), Image.fromarray(np.array([[largest, 1]], np.uint16))]
    assert decide_bit_depth(imgs) == depth


def test_bit_depth_ignores_alpha_8_bit_images_and_takes_an_override(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint16)
    rgba[..., :3], rgba[..., 3] = 4000, 65535  # 12-bit colour, opaque 16-bit alpha
    write_png16(tmp_path / "rgba.png", rgba)
    Image.fromarray(np.full((4, 4, 3), 255, np.uint8)).save(tmp_path / "eight.png")
    assert decide_bit_depth([tmp_path / "rgba.png", tmp_path / "eight.png"]) == 12
    assert decide_bit_depth([tmp_path / "eight.png"]) == 8
    assert decide_bit_depth([tmp_path / "rgba.png"], override=16) == 16
    from zsad.detection.inputs import as_images, bit_depth_of

    assert bit_depth_of(as_images(tmp_path)) == 12 and bit_depth_of(as_images(tmp_path), override=14) == 14
    assert bit_depth_of(as_images([Image.open(tmp_path / "eight.png")])) == 8
    with pytest.raises(ConfigError, match="bit depth 11 is not one of 8, 10, 12, 14, 16"):
        decide_bit_depth([], override=11)
    with pytest.raises(ConfigError, match="not one of"):
        build_transform(32, bit_depth="12")
    with pytest.raises(ConfigError, match="do not fit 16 bits"):
        decide_bit_depth([Image.fromarray(np.array([[70000]], np.int32))])


def test_float_images_are_read_as_0_to_1(tmp_path):
    import tifffile

    rng = np.random.default_rng(3)
    gray, colour = rng.random((6, 5)).astype(np.float32), rng.random((6, 5, 3)).astype(np.float32)
    tifffile.imwrite(tmp_path / "gray.tif", gray)
    tifffile.imwrite(tmp_path / "colour.tif", colour, photometric="rgb")
    assert Image.open(tmp_path / "gray.tif").mode == "F"
    with pytest.raises(Image.UnidentifiedImageError):
        Image.open(tmp_path / "colour.tif")  # PIL has no float colour mode
    for name, values in (("gray.tif", gray[..., None].repeat(3, -1)), ("colour.tif", colour)):
        img = open_image(tmp_path / name)
        assert np.array_equal(np.asarray(to_rgb(img, bit_depth=12)), np.round(values.astype(np.float64) * 255).astype(np.uint8))
    assert decide_bit_depth([tmp_path / "gray.tif", tmp_path / "colour.tif"]) == 8
    with pytest.raises(ConfigError, match=r"values from 0 to 3.*Rescale them to \[0, 1\]"):
        decide_bit_depth([Image.fromarray(np.array([[0.0, 3.0]], np.float32))])


def test_16_bit_colour_tiff_is_read_losslessly(tmp_path):
    import tifffile

    samples = np.random.default_rng(4).integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "contig.tif", samples, photometric="rgb")
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(samples, -1, 0), photometric="rgb", planarconfig="separate")
    for name in ("contig.tif", "planar.tif"):
        held, kind = samples_of(open_image(tmp_path / name))
        assert kind == "wide" and np.array_equal(held, samples)


def test_what_cannot_be_read_says_what_to_do(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "u32.tif", np.zeros((4, 4, 3), np.uint32), photometric="rgb")
    with pytest.raises(ConfigError, match="uint32 samples are not supported. Save it with 8- or 16-bit integer or float samples"):
        FileSource([tmp_path / "u32.tif"]).load(0)
    with pytest.raises(ConfigError, match="not an image of 1–4 channels"):
        image_from_samples(np.zeros((4, 4, 5), np.uint16))
    cropped = image_from_samples(np.zeros((8, 8, 3), np.uint16)).crop((0, 0, 4, 4))
    with pytest.raises(ConfigError, match="full-precision pixels are lost"):
        to_rgb(cropped)


def test_alpha_is_composited_on_the_background(tmp_path):
    """(200, 100, 50) at alpha 128/255 over black: 200·128/255 = 100.4 → 100, 50.2 → 50, 25.1 → 25; over white
    add 255·127/255 = 127: 227, 177, 152."""
    assert BACKGROUND == (0, 0, 0)
    rgba = Image.fromarray(np.array([[[200, 100, 50, 128], [10, 20, 30, 255]]], np.uint8), "RGBA")
    assert np.asarray(to_rgb(rgba)).tolist() == [[[100, 50, 25], [10, 20, 30]]]
    assert np.asarray(to_rgb(rgba, background=(255, 255, 255))).tolist() == [[[227, 177, 152], [10, 20, 30]]]
    la = Image.fromarray(np.array([[[200, 128]]], np.uint8), "LA")
    assert np.asarray(to_rgb(la)).tolist() == [[[100, 100, 100]]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 250, 40, 60] + [0] * 762)
    palette.putdata([1, 0])
    palette.info["transparency"] = 1  # palette entry 1 is transparent
    assert np.asarray(to_rgb(palette, background=(9, 9, 9))).tolist() == [[[9, 9, 9], [0, 0, 0]]]
    wide = np.array([[[60000, 30000, 0, 32768]]], np.uint16)  # 16-bit RGBA: alpha scaled by 65535
    write_png16(tmp_path / "rgba16.png", wide)
    expected = np.round(np.floor(wide[0, 0, :3] / 256) / 255 * (32768 / 65535) * 255).astype(np.uint8)  # top 8 bits, then alpha
    assert np.asarray(to_rgb(open_image(tmp_path / "rgba16.png"), 16))[0, 0].tolist() == expected.tolist()


def test_overlay_of_a_16_bit_image_is_its_8_bit_twin_s(rgb8):
    from zsad.detection.overlays import OverlayStyle, overlay

    gray8 = rgb8[..., 0]
    img16 = Image.fromarray(gray8.astype(np.uint16) * 257)
    amap = np.random.default_rng(5).random(gray8.shape)
    style = OverlayStyle(0.0, 1.0, 0.8)
    assert np.array_equal(np.asarray(img16.convert("RGB"))[..., 0], np.where(gray8 > 0, 255, 0))  # PIL's conversion: white
    ours, twin = overlay(img16, amap, style, bit_depth=16), overlay(Image.fromarray(gray8), amap, style)
    assert np.array_equal(np.asarray(ours), np.asarray(twin))
    colour16 = image_from_samples(np.round(rgb8.astype(np.float64) * 4095 / 255).astype(np.uint16))
    assert np.array_equal(np.asarray(overlay(colour16, amap, style, bit_depth=12)), np.asarray(overlay(Image.fromarray(rgb8), amap, style)))


def test_uint16_arrays_are_kept_at_full_precision():
    from zsad.detection.inputs import as_images

    arr = np.random.default_rng(6).integers(0, 4096, (2, 5, 4, 3), dtype=np.uint16)
    images = as_images(arr)
    assert np.array_equal(samples_of(images.source.load(1))[0], arr[1])
    assert decide_bit_depth(images.source.load(i) for i in range(2)) == 12
    low_bit = arr.copy()
    low_bit[0, 0, 0, 0] ^= 1  # same high bytes, so the same 8-bit preview
    assert as_images(low_bit).source.identity() != images.source.identity()
    assert as_images(arr[..., :1]).source.load(0).mode == "I;16"


def test_image_size_reads_headers_and_float_tiffs(tmp_path):
    import tifffile

    from zsad.detection.inputs import image_size

    Image.fromarray(np.zeros((7, 9, 3), np.uint8)).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((5, 3, 3), np.float32), photometric="rgb")
    assert image_size(tmp_path / "a.png") == (7, 9)
    assert image_size(str(tmp_path / "f.tif")) == (5, 3)
    assert image_size(Image.new("L", (4, 6))) == (6, 4)


def test_small_image_note_names_images_below_one_tile():
    from zsad.detection.inputs import small_image_note

    names = ["a.png", "b.png", "c.png", "d.png", "e.png"]
    sizes = [(64, 64), (20, 40), (31, 31), (32, 32), (10, 100)]
    note = small_image_note(names, sizes, (48, 64), tile=32)
    assert note is not None and note.startswith("3 of 5 images are smaller than one tile (32 px)")
    assert "48×64 px (up to 4.8×)" in note and "b.png (20×40), c.png (31×31), e.png (10×100)" in note
    assert small_image_note(names[:1], sizes[:1], 64, tile=32) is None
    assert small_image_note(names, sizes, 64, tile=32, examples=1).endswith("b.png (20×40), ….")
