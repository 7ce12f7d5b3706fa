"""The time estimate printed before long work (zsad/detection/estimate.py)."""

from __future__ import annotations

import pytest
import torch

from zsad.detection.estimate import duration, estimate, faster_settings, seconds_per_evaluation
from zsad.scoring.tiles import Tiling


def test_estimate_is_images_times_evaluations_times_the_cost_of_one():
    e = estimate(0.002, images=300, evaluations_per_image=225 * 20)
    assert e.evaluations == 300 * 4500 and e.seconds == pytest.approx(2700.0)
    assert "45 min" in e.sentence("[fit] expected time") and "1,350,000 network evaluations" in e.sentence("x")


def test_durations_read_at_a_glance():
    assert [duration(s) for s in (12, 600, 7200)] == ["12 s", "10 min", "2.0 h"]


def test_faster_settings_name_the_flag_and_their_own_estimate():
    """The defaults at 256 px: 225 tiles of 32 px every 16 px; stride = tile gives 64, half the working size 49."""
    lines = faster_settings(Tiling(256, 256, 32, 16), evaluations_per_tile=20, per_evaluation=0.01, images=100)
    assert lines[0].startswith("--tile-stride 32: 64 tile(s) per image, about 21 min")
    assert lines[1].startswith("--working-size 128: 49 tile(s)") and lines[2].startswith("--working-size 64: 9 tile(s)")
    assert faster_settings(Tiling.whole(32), 20, 0.01, 100) == []


def test_one_call_is_timed_at_the_run_shape():
    class Slow(torch.nn.Module):
        image_size, num_timesteps = 8, 100
        alphas_cumprod = torch.ones(100)
        calls: list = []

        def predict_eps(self, x, t):
            self.calls.append(tuple(x.shape))
            return x

    bb = Slow()
    assert seconds_per_evaluation(bb, 16) >= 0 and bb.calls == [(1, 3, 8, 8), (16, 3, 8, 8)]


def test_the_fast_preset_is_named_first_with_its_own_cost():
    lines = faster_settings(Tiling(256, 256, 32, 16), evaluations_per_tile=20, per_evaluation=0.01, images=100, fast_evaluations_per_tile=4)
    assert lines[0].startswith("--preset fast: 64 tile(s) per image, about 4 min")  # 100 × 64 × 4 × 0.01 s = 256 s
    assert lines[1].startswith("--tile-stride 32: 64 tile(s)")
    # a scorer the preset cannot cut (no steps) is not offered it
    assert not any(line.startswith("--preset") for line in faster_settings(Tiling(256, 256, 32, 16), 6, 0.01, 100, 6))


def test_presets_fill_only_what_is_unset():
    from zsad.detection.presets import preset_options
    from zsad.errors import ConfigError
    from zsad.scoring.scorers import SCORERS

    assert preset_options("fast", SCORERS["diffpath_fused"], None, None, 32) == ({"steps": 2}, 32)
    # the default's 5 steps were measured on the recommended scorer only (experiments/fast_preset/RULE.md)
    assert preset_options("default", SCORERS["diffpath_fused"], None, None, 32) == ({"steps": 5}, 16)
    assert preset_options("default", SCORERS["diffpath_6d"], None, None, 32) == ({}, 16)
    assert preset_options("default", SCORERS["diffpath_v2"], None, None, 32) == ({}, 16)
    assert preset_options("default", SCORERS["diffpath_fused"], {"steps": 10}, None, 32) == ({"steps": 10}, 16)
    # steps set one level down count as set: the fused scorer refuses v2.steps unlike its own steps
    assert preset_options("default", SCORERS["diffpath_fused"], {"v2": {"steps": 10}}, None, 32) == ({"v2": {"steps": 10}}, 16)
    SCORERS["diffpath_fused"](**preset_options("default", SCORERS["diffpath_fused"], {"v2": {"steps": 10}}, None, 32)[0])
    assert preset_options("fast", SCORERS["diffpath_fused"], {"steps": 5}, 8, 32) == ({"steps": 5}, 8)  # explicit wins
    assert preset_options("fast", SCORERS["msma"], None, None, 16) == ({}, 16)  # msma has levels, not steps
    with pytest.raises(ConfigError, match="Known presets: default, fast"):
        preset_options("quick", SCORERS["diffpath_fused"], None, None, 32)


def test_fit_with_the_fast_preset_records_its_tiling_and_steps(trained_checkpoint, tmp_path):
    import numpy as np
    from PIL import Image

    from zsad import AnomalyDetector
    from zsad.data import make_builtin

    (tmp_path / "normal").mkdir()
    for i, a in enumerate(make_builtin("clouds", "train", 24)):
        Image.fromarray(a).save(tmp_path / "normal" / f"n{i:03d}.png")
    det = AnomalyDetector.fit(tmp_path / "normal", backbone=str(trained_checkpoint), preset="fast", false_alarm_rate=0.25, working_size=32,
                              device="cpu", cache_dir=tmp_path / "cache", batch_size=24, network_batch=24)
    assert (det.tiling.tile, det.tiling.stride, det.tiling.count) == (16, 16, 4)
    assert det.scorer.steps == 2 and det.network_evaluations_per_image() == 4 * 4
    assert np.isfinite(det.calibration.scores).all()
