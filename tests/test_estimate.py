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
