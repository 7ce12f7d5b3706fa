"""Every shipped config loads and validates; mistakes give errors that name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO
from omegaconf import OmegaConf

from zsad.config import ConfigError, load_config
from zsad.config import schema as S

TOP_LEVEL = {"train": S.TrainConfig, "eval": S.EvalConfig, "score": S.ScoreConfig, "ablate": S.AblateConfig}
PIECES = {"data": S.DataConfig, "model": S.ModelConfig, "trainer": S.TrainerConfig, "logger": S.LoggerConfig}


def _piece_schema(group: str, path: Path):
    """conf/model holds network definitions for training and, with a `format` key, backbone presets."""
    if group == "model" and "format" in OmegaConf.load(path):
        return S.BackboneConfig
    return PIECES[group]


def _top_level_configs():
    for folder, schema in TOP_LEVEL.items():
        for path in sorted((REPO / "conf" / folder).glob("*.yaml")):
            yield pytest.param(path, schema, id=f"{folder}/{path.stem}")


@pytest.mark.parametrize("path, schema", list(_top_level_configs()))
def test_every_shipped_config_loads(path: Path, schema):
    cfg = load_config(path, [], schema)
    assert OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("group, schema", PIECES.items())
def test_every_config_piece_fits_its_schema(group, schema):
    files = sorted((REPO / "conf" / group).glob("*.yaml"))
    assert files, f"no configs in conf/{group}"
    for path in files:
        OmegaConf.merge(OmegaConf.structured(_piece_schema(group, path)), OmegaConf.load(path))


def test_dataset_groups_fit_the_data_schema():
    for path in sorted((REPO / "conf" / "datasets").glob("*.yaml")):
        for data in OmegaConf.load(path).values():
            OmegaConf.merge(OmegaConf.structured(S.DataConfig), data)


def test_backbone_presets_match_the_loader_presets():
    from zsad.diffusion.improved_diffusion import PRESETS, resolve_config

    for name, file in (("diffpath-celeba32", "diffpath_celeba32"), ("openai-imagenet64", "openai_imagenet64")):
        yaml = OmegaConf.load(REPO / "conf" / "model" / f"{file}.yaml")
        assert resolve_config(OmegaConf.to_container(yaml.config)) == PRESETS[name]


def test_group_selection_and_dotlist_overrides():
    cfg = load_config(REPO / "conf/train/smoke.yaml", ["logger=csv", "trainer.max_steps=7", "model.unet.dim_mults=[1,2]"], S.TrainConfig)
    assert cfg.logger.kind == "csv" and cfg.trainer.max_steps == 7 and list(cfg.model.unet.dim_mults) == [1, 2]


def test_unknown_key_names_nearest_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "conf/train/smoke.yaml", ["optim.learning_rate=0.1"], S.TrainConfig)
    msg = str(err.value)
    assert "optim.learning_rate" in msg and "command-line overrides" in msg and "Valid keys under 'optim': lr" in msg


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    (tmp_path / "train").mkdir()
    bad = tmp_path / "train" / "bad.yaml"
    bad.write_text("batch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"Unknown config key 'batch_sise' \(from .*bad.yaml\).*Did you mean 'batch_size'"):
        load_config(bad, [], S.TrainConfig)


def test_wrong_type_and_malformed_override():
    with pytest.raises(ConfigError, match="Wrong value for 'batch_size'"):
        load_config(REPO / "conf/train/smoke.yaml", ["batch_size=many"], S.TrainConfig)
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(REPO / "conf/train/smoke.yaml", ["batch_size"], S.TrainConfig)
    with pytest.raises(ConfigError, match="Could not parse overrides"):
        load_config(REPO / "conf/train/smoke.yaml", ["model.unet.dim_mults=[1,2"], S.TrainConfig)


def test_missing_file_and_missing_group_option(tmp_path):
    with pytest.raises(ConfigError, match="not found.*smoke.yaml"):
        load_config(REPO / "conf/train/smok.yaml", [], S.TrainConfig)
    (tmp_path / "train").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "a.yaml").write_text("unet: {dim: 8}\n")
    cfg = tmp_path / "train" / "x.yaml"
    cfg.write_text("defaults:\n  model: b\n")
    with pytest.raises(ConfigError, match="Options: a"):
        load_config(cfg, [], S.TrainConfig)


def test_detector_schema_mirrors_the_detectors():
    """conf → detector: every GMMConfig/KDEConfig/SoftMinKNNConfig field is a detector argument with the same default."""
    import dataclasses

    from zsad.scoring.detector import GMMDetector, KDEDetector, SoftMinKNNDetector

    for schema, detector in ((S.GMMConfig, GMMDetector), (S.KDEConfig, KDEDetector), (S.SoftMinKNNConfig, SoftMinKNNDetector)):
        ours = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory() for f in dataclasses.fields(schema)}
        theirs = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory() for f in dataclasses.fields(detector)}
        assert set(ours) <= set(theirs)
        for key, value in ours.items():
            assert theirs[key] == value, key
