"""Tiles and maps as units (zsad/scoring/tiles.py, zsad/detection/maps.py): offsets, cutting, blending, positions,
and the position invariance of an anomalous tile (docs/method.md §7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zsad.detection.maps import MapSettings, anomaly_map, colour_scale, image_scores, map_threshold, pixel_map, tile_map, upsample
from zsad.errors import ConfigError
from zsad.scoring.tiles import Tiling, _starts, hann_window


def test_starts_cover_the_axis_and_move_the_last_tile_in():
    assert _starts(128, 16, 8) == list(range(0, 113, 8))
    assert _starts(128, 16, 16) == list(range(0, 113, 16))
    assert _starts(100, 16, 16) == [0, 16, 32, 48, 64, 80, 84]  # the last one moved in to end at 100
    assert _starts(16, 16, 8) == [0]
    for size, tile, stride in [(100, 16, 8), (37, 5, 3), (64, 16, 16), (33, 32, 1)]:
        starts = _starts(size, tile, stride)
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s : s + tile] = True
        assert covered.all() and starts[-1] + tile == size and all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_offsets_and_count_over_a_rectangle_row_by_row():
    t = Tiling(32, 48, 16, 16)
    assert t.offsets == [(0, 0), (0, 16), (0, 32), (16, 0), (16, 16), (16, 32)]
    assert t.count == 6 and t.shape == (32, 48) and t.working_size == 48
    assert Tiling.whole(32).offsets == [(0, 0)] and Tiling.whole(32).count == 1
    assert Tiling.from_dict(t.to_dict()) == t


def test_cut_returns_each_tile_in_offset_order():
    t = Tiling(32, 48, 16, 8)
    images = torch.arange(2 * 3 * 32 * 48, dtype=torch.float32).reshape(2, 3, 32, 48)
    tiles = t.cut(images)
    assert tiles.shape == (2 * t.count, 3, 16, 16)
    for b in range(2):
        for k, (y, x) in enumerate(t.offsets):
            assert torch.equal(tiles[b * t.count + k], images[b, :, y : y + 16, x : x + 16])
    with pytest.raises(ValueError, match="32×48"):
        t.cut(torch.zeros(1, 3, 48, 32))


def test_positions_are_tile_centres_as_fractions():
    t = Tiling(32, 64, 16, 16)
    pos = t.positions()
    assert pos.dtype == torch.float64 and pos.shape == (t.count, 2)
    assert pos[0].tolist() == [8 / 32, 8 / 64] and pos[-1].tolist() == [24 / 32, 56 / 64]


def test_bad_tilings_are_clear_errors():
    with pytest.raises(ConfigError, match="--working-size 32"):
        Tiling(16, 64, 32, 16)
    with pytest.raises(ConfigError, match="--tile-stride 16"):
        Tiling(64, 64, 16, 17)
    with pytest.raises(ConfigError, match="blend"):
        MapSettings(blend="median")


def _one_hot_scores(t: Tiling, index: int, value: float = 10.0) -> torch.Tensor:
    z = torch.zeros(1, t.count, dtype=torch.float64)
    z[0, index] = value
    return z


@pytest.mark.parametrize("blend", ["hann", "max"])
@pytest.mark.parametrize("stride", [16, 8])
def test_one_anomalous_tile_scores_the_same_at_a_corner_an_edge_and_the_centre(blend, stride):
    """128 px, 16 px tiles: one tile at z = 10, the rest at 0. The old plain mean gave 10 / 5 / 2.5 at stride 8."""
    t = Tiling(128, 128, 16, stride)
    n = len(_starts(128, 16, stride))
    settings = MapSettings(blend=blend)
    got = [float(image_scores(tile_map(t, _one_hot_scores(t, i), settings), settings)[0]) for i in (0, n // 2, (n // 2) * n + n // 2)]
    assert got == pytest.approx([10.0, 10.0, 10.0], rel=0.01)


def test_the_plain_mean_blend_is_damped_in_the_interior():
    """The old blend, kept for comparison rows: the test above fails for it (so the test can fail)."""
    t = Tiling(128, 128, 16, 8)
    settings = MapSettings(blend="mean")
    corner = float(image_scores(tile_map(t, _one_hot_scores(t, 0), settings), settings)[0])
    centre = float(image_scores(tile_map(t, _one_hot_scores(t, 7 * 15 + 7), settings), settings)[0])
    assert corner == pytest.approx(10.0) and centre == pytest.approx(2.5)


@pytest.mark.parametrize("blend", ["hann", "max", "mean"])
@pytest.mark.parametrize("shape,stride", [((128, 128), 8), ((100, 60), 8), ((64, 64), 16), ((37, 50), 5)])
def test_a_constant_map_stays_constant(blend, shape, stride):
    t = Tiling(*shape, 16, stride)
    out = t.blend(torch.full((2, t.count), -3.5, dtype=torch.float64), blend)
    assert out.shape == (2, *shape)
    assert torch.allclose(out, torch.full_like(out, -3.5), rtol=0, atol=1e-12)


def test_hann_window_is_a_partition_of_unity_at_half_a_tile():
    w = hann_window(16)
    assert float(w[0, 0]) == 0.0 and float(w[8, 8]) == pytest.approx(1.0)
    row = torch.sin(torch.pi * torch.arange(16, dtype=torch.float64) / 16) ** 2
    assert torch.allclose(row[:8] + row[8:], torch.ones(8, dtype=torch.float64))


def test_blend_of_per_pixel_tiles_at_stride_tile_is_the_tiles_themselves():
    t = Tiling(32, 32, 16, 16)
    values = torch.randn(1, t.count, 16, 16, dtype=torch.float64)
    for blend in ("hann", "max", "mean"):
        out = t.blend(values, blend)
        for k, (y, x) in enumerate(t.offsets):
            assert torch.allclose(out[0, y : y + 16, x : x + 16], values[0, k])


def test_max_blend_is_the_largest_covering_value():
    t = Tiling(32, 32, 16, 8)
    z = torch.arange(t.count, dtype=torch.float64)[None]
    out = t.blend(z, "max")
    for py, px in [(0, 0), (10, 10), (31, 31), (20, 5)]:
        covering = [k for k, (y, x) in enumerate(t.offsets) if y <= py < y + 16 and x <= px < x + 16]
        assert float(out[0, py, px]) == max(covering)


def test_tile_map_standardises_then_blends():
    t = Tiling(32, 32, 16, 16)
    settings = MapSettings(tile_mean=2.0, tile_std=4.0)
    m = tile_map(t, torch.tensor([[2.0, 6.0, 10.0, -2.0]]), settings)
    assert m.dtype == torch.float64
    assert [float(m[0, 0, 0]), float(m[0, 0, 20]), float(m[0, 20, 0]), float(m[0, 20, 20])] == [0.0, 1.0, 2.0, -1.0]


def test_anomaly_map_combinations():
    tiles = torch.full((1, 4, 4), 1.0, dtype=torch.float64)
    pixels = torch.arange(16, dtype=torch.float64).reshape(1, 4, 4)
    s = MapSettings(combination="tile+pixel", pixel_mean=5.0, pixel_std=2.0)
    assert torch.allclose(anomaly_map(tiles, pixels, s), 1.0 + (pixels - 5.0) / 2.0)
    s.combination = "pixel"
    assert torch.allclose(anomaly_map(tiles, pixels, s), (pixels - 5.0) / 2.0)
    s.combination = "tile"
    assert torch.equal(anomaly_map(tiles, pixels, s), tiles)
    assert torch.equal(anomaly_map(tiles, None, MapSettings()), tiles)


def test_pixel_map_blends_with_hann_weights_and_smooths():
    t = Tiling(32, 32, 16, 8)
    maps = torch.full((1, t.count, 16, 16), 2.0)
    assert torch.allclose(pixel_map(t, maps, MapSettings()), torch.full((1, 32, 32), 2.0, dtype=torch.float64))
    spike = torch.zeros(1, t.count, 16, 16)
    spike[0, 4, 8, 8] = 1.0  # the centre tile's centre pixel: Hann weight 1 there, the other tiles' 0
    plain = pixel_map(t, spike, MapSettings())
    assert float(plain.max()) == pytest.approx(1.0)
    smooth = pixel_map(t, spike, MapSettings(pixel_sigma=2.0))
    assert float(smooth.sum()) == pytest.approx(float(plain.sum()), rel=1e-6) and float(smooth.max()) < 0.1
    assert pixel_map(t, None, MapSettings()) is None


def test_image_scores_max_and_top_k():
    m = torch.arange(100, dtype=torch.float64).reshape(1, 10, 10)
    assert image_scores(m, MapSettings()).tolist() == [99.0]
    assert image_scores(m, MapSettings(aggregation="top_k", top_k=0.1)).tolist() == [np.mean(np.arange(90, 100))]


def test_map_threshold_is_the_kth_largest_maximum():
    maxima = np.arange(1.0, 20.0)  # n_cal = 19, α = 0.1 → k = 2
    assert map_threshold(maxima, 0.1) == 18.0
    assert map_threshold(maxima, 0.05) == 19.0
    assert map_threshold(maxima, 0.01) == float("inf")  # k = 0: nothing can be outlined


def test_colour_scale_puts_the_threshold_in_the_middle():
    assert colour_scale(1.0, 3.0, 10.0) == (1.0, 5.0)
    assert colour_scale(1.0, float("inf"), 10.0) == (1.0, 10.0)


def test_upsample_to_a_rectangle():
    m = torch.zeros(4, 6, dtype=torch.float64)
    m[:, 3:] = 1.0
    out = upsample(m, (8, 12))
    assert out.shape == (8, 12) and out[:, :5].max() < 0.5 and out[:, 7:].min() > 0.5


@pytest.mark.parametrize("shape,stride", [((171, 64), 16), ((64, 64), 8), ((200, 120), 16), ((64, 64), 32)])
def test_the_default_blend_is_position_invariant_on_any_tiling(shape, stride):
    """The default (`max`): every tile, including the rows next to a moved-in last row and at a quarter-tile stride,
    gives the map maximum 10 when it alone is at z = 10. Hann weights do not (8.9 beside a moved-in row)."""
    t = Tiling(*shape, 32, stride)
    settings = MapSettings()
    assert settings.blend == "max"
    for index in range(t.count):
        assert float(image_scores(tile_map(t, _one_hot_scores(t, index), settings), settings)[0]) == 10.0
    if shape == (171, 64):
        hann = MapSettings(blend="hann")
        worst = min(float(image_scores(tile_map(t, _one_hot_scores(t, i), hann), hann)[0]) for i in range(t.count))
        assert worst < 9.0
