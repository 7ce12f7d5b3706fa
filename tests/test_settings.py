"""One settings object per detector (zsad/detection/settings.py, issue 27 §4): `zsad fit`, `zsad test`, the Python API
and the anomalib model read the same fields with the same defaults, each written once."""

from __future__ import annotations

import argparse
import dataclasses
import re

import numpy as np
import pytest
from helpers import random_backbone

from zsad import cli
from zsad.data import make_builtin
from zsad.detection.model import AnomalyDetector
from zsad.detection.settings import DetectorSettings
from zsad.errors import ConfigError
from zsad.evaluation.industrial import DEFAULT_RATE, IndustrialSettings
from zsad.scoring.scorers import RECOMMENDED_SCORER


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


@pytest.mark.parametrize("command", ["fit", "test"])
def test_the_commands_hold_no_defaults_of_their_own(command):
    """Every flag that is a DetectorSettings field is None (or an unset switch) until given: the default is the field's."""
    actions = {a.dest: a for a in _subparser(command)._actions}
    shown = [name for name in cli.DETECTOR_FLAGS if name in actions]
    assert len(shown) >= 12 and set(cli.DETECTOR_FLAGS) <= set(DetectorSettings.names())
    for name in shown:
        assert actions[name].default in (None, False), f"--{name.replace('_', '-')} has its own default {actions[name].default!r}"


def test_the_defaults_the_help_states_are_the_settings_defaults():
    helps = {a.dest: a.help for a in _subparser("fit")._actions}
    d = DetectorSettings()
    assert re.search(r"default (\S+?)\)", helps["false_alarm_rate"]).group(1) == f"{d.false_alarm_rate:g}"
    assert re.search(r"default (\d+)", helps["batch_size"]).group(1) == str(d.batch_size)
    assert re.search(r"default (\S+?)\)", helps["cache_dir"]).group(1) == d.cache_dir
    assert "(default)" in helps["aggregation"] and d.aggregation == "max"
    assert d.scorer == RECOMMENDED_SCORER and DEFAULT_RATE == d.false_alarm_rate


def test_fit_passes_exactly_the_flags_given(monkeypatch, tmp_path):
    seen = {}

    def fake_fit_folder(normal_dir, out, force=False, backbone=None, settings=None):
        seen.update(settings=settings, backbone=backbone)
        return None, ["ok"]

    monkeypatch.setattr("zsad.detection.fit.fit_folder", fake_fit_folder)
    assert cli.main(["fit", str(tmp_path), "-o", str(tmp_path / "det")]) == 0
    assert seen["settings"] == DetectorSettings() and seen["backbone"] == "diffpath-celeba32"
    assert cli.main(["fit", str(tmp_path), "-o", str(tmp_path / "det"), "--tile-stride", "8", "--preset", "fast", "--false-alarm-rate", "0.1",
                     "--batch-size", "4", "--skip-corrupt"]) == 0
    assert seen["settings"] == DetectorSettings(tile_stride=8, preset="fast", false_alarm_rate=0.1, batch_size=4, skip_corrupt=True)
    assert cli.main(["fit", str(tmp_path), "-o", str(tmp_path / "det"), "--steps", "10"]) == 0  # the old default's steps
    assert seen["settings"] == DetectorSettings(scorer_options={"steps": 10})


def test_steps_are_refused_for_a_scorer_without_a_trajectory(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("zsad.detection.fit.fit_folder", lambda *a, **k: pytest.fail("fitted despite a refused flag"))
    monkeypatch.setattr("zsad.evaluation.industrial.run_test", lambda *a, **k: pytest.fail("tested despite a refused flag"))
    assert cli.main(["fit", str(tmp_path), "-o", str(tmp_path / "det"), "--scorer", "msma", "--steps", "3"]) == 2
    assert "scorer 'msma' has none" in capsys.readouterr().err
    assert cli.main(["test", "--data", "mvtec:x", "-o", str(tmp_path), "--scorers", "diffpath_fused,scoped", "--steps", "3"]) == 2
    assert "scorer 'scoped' has none" in capsys.readouterr().err
    assert cli.main(["fit", str(tmp_path), "-o", str(tmp_path / "det"), "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err


def test_test_builds_industrial_settings_on_the_same_fields(monkeypatch, tmp_path):
    seen = {}

    def fake_run_test(data, out, backbone=None, detector=None, settings=None, logger_cfg=None):
        seen["settings"] = settings
        return {"table_markdown": "", "output_dir": str(out)}

    monkeypatch.setattr("zsad.evaluation.industrial.run_test", fake_run_test)
    args = ["test", "--data", "mvtec:x", "-o", str(tmp_path), "--backbone", "b", "--logger", "none"]
    assert cli.main(args) == 0
    s = seen["settings"]
    assert isinstance(s, IndustrialSettings) and s.detector_part() == DetectorSettings(false_alarm_rate=None)
    assert s.methods() == [RECOMMENDED_SCORER]
    assert s.detector_settings("diffpath_v2") == DetectorSettings(scorer="diffpath_v2", require_rate=False)  # α: the default
    assert cli.main([*args, "--scorers", "diffpath_v2, recon", "--blend", "hann", "--false-alarm-rate", "0.2"]) == 0
    s = seen["settings"]
    assert s.methods() == ["diffpath_v2", "recon"] and s.blend == "hann"
    assert s.detector_settings("recon") == DetectorSettings(scorer="recon", blend="hann", false_alarm_rate=0.2, require_rate=False)
    assert cli.main([*args, "--scorers", "diffpath_v2,recon", "--steps", "3"]) == 0  # each method gets the steps
    assert seen["settings"].detector_settings("recon") == DetectorSettings(scorer="recon", scorer_options={"steps": 3}, require_rate=False)


def test_unknown_settings_are_refused_with_the_known_ones():
    with pytest.raises(ConfigError, match=r"Unknown setting tile_strides\. Known: scorer, .*tile_stride"):
        DetectorSettings().replace(tile_strides=8)
    with pytest.raises(ConfigError, match="Unknown setting"):
        AnomalyDetector.fit([np.zeros((16, 16, 3), np.uint8)], backbone=random_backbone(), stride=8)
    assert IndustrialSettings().replace(pixel_store=True).pixel_store  # a subclass's own fields are known to it
    assert {f.name for f in dataclasses.fields(IndustrialSettings)} > set(DetectorSettings.names())


def test_the_api_gives_the_same_detector_from_settings_and_from_keywords(tmp_path):
    images, checks = make_builtin("clouds", "train", 24), make_builtin("noise", "train", 4)
    options = dict(scorer="diffpath_v2", scorer_options={"steps": 2}, false_alarm_rate=0.2, working_size=16, device="cpu", cache_dir=None,
                   batch_size=8)
    by_keywords = AnomalyDetector.fit(images, backbone=random_backbone(), **options)
    by_settings = AnomalyDetector.fit(images, backbone=random_backbone(), settings=DetectorSettings(**options))
    mixed = AnomalyDetector.fit(images, backbone=random_backbone(), settings=DetectorSettings(**{**options, "false_alarm_rate": 0.5}),
                                false_alarm_rate=0.2)  # a keyword replaces the settings' field
    a, b, c = (d.score(checks).scores for d in (by_keywords, by_settings, mixed))
    assert np.array_equal(a, b) and np.array_equal(a, c) and by_settings.threshold == by_keywords.threshold == mixed.threshold


def test_the_anomalib_model_takes_the_same_fields_and_defaults():
    pytest.importorskip("anomalib")
    from zsad.integrations.anomalib.model import FIT_DEFAULTS, FIT_OPTIONS

    defaults = DetectorSettings.defaults()
    assert set(FIT_OPTIONS) - {"backbone"} <= set(defaults) and "preset" in FIT_OPTIONS
    assert all(FIT_DEFAULTS[name] == defaults[name] for name in FIT_OPTIONS if name != "backbone")
    left_out = set(defaults) - set(FIT_OPTIONS)
    assert left_out == {"skip_corrupt", "bit_depth"}  # anomalib hands over decoded 8-bit images (model.py says why)
    from zsad.integrations.anomalib.model import Zsad

    assert Zsad(detector_kind="softmin_knn").fit_options["detector_kind"] == "softmin_knn"
    with pytest.raises(ConfigError, match="gmm, softmin_knn"):  # when the model is made, not after the epoch
        Zsad(detector_kind="knn")


@pytest.mark.parametrize("kind", [DetectorSettings, IndustrialSettings])
def test_settings_are_hashable_and_keep_their_own_copy_of_the_scorer_options(kind):
    """Frozen settings can be a cache key or a set member although scorer_options is a dict, equal settings hash alike,
    different options differ, and changing the caller's dict afterwards does not change the settings."""
    options = {"steps": 5, "t_grid": [1, 2]}
    a = kind(scorer_options=options)
    options["steps"] = 3
    options["t_grid"].append(3)
    assert a.scorer_options == {"steps": 5, "t_grid": [1, 2]}
    b = kind(scorer_options={"t_grid": [1, 2], "steps": 5})
    assert a == b and hash(a) == hash(b) and len({a, b, kind()}) == 2
    assert hash(a) != hash(kind(scorer_options={"steps": 4, "t_grid": [1, 2]}))
    with pytest.raises(ConfigError, match="scorer_options must map option names to values.*'steps=5'"):
        kind(scorer_options="steps=5")
