"""The feature recipe (docs/method.md §2): one typed record of everything that makes a feature, written beside
every detector and checked by every command that uses one."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest

from zsad.scoring.recipe import IDENTITY_FIELDS, FeatureRecipe, RecipeMismatchError, recipe_for


def _recipe(**changes) -> FeatureRecipe:
    base = FeatureRecipe(
        scorer={"name": "diffpath_fused", "steps": 10, "clip_denoised": True, "v2": {"name": "diffpath_v2", "weighting": "none"}},
        scorer_version="1+1+1", preprocessing={"image_size": 256, "center_crop": None, "tiles": {"working_size": 256, "tile": 32, "stride": 16}},
        seed=0, weights_sha256="ab" * 32, model_config={"image_size": 32, "num_channels": 128}, weights_path="/data/celeba.pt",
        weights_source="diffpath-celeba32", weights_format="improved-diffusion", use_ema=None, trained_on="celeba", device="cpu",
        precision="32-true", tf32=False, fast_path=True, compile=None, network_batch=64, extra={"id_dataset": {"name": "celeba"}},
    )
    return dataclasses.replace(base, **changes)


def test_every_ingredient_round_trips(tmp_path):
    recipe = _recipe()
    back = FeatureRecipe.read(recipe.write(tmp_path / "recipe.json"))
    assert back == recipe
    for field in dataclasses.fields(FeatureRecipe):
        assert getattr(back, field.name) == getattr(recipe, field.name), field.name
    assert back.key() == recipe.key() and back.scorer_name == "diffpath_fused"
    assert json.loads((tmp_path / "recipe.json").read_text())["scorer_version"] == "1+1+1", "today's field name is kept"


CHANGES = {
    "weights_sha256": "cd" * 32, "model_config": {"image_size": 64}, "preprocessing": {"image_size": 128, "center_crop": None},
    "scorer": {"name": "diffpath_v2", "steps": 10}, "scorer_version": "1+1+2", "seed": 1, "seed_rule": "another rule",
    "precision": "bf16-mixed", "tf32": True, "fast_path": False, "compile": "max-autotune",
}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_an_identity_field_that_differs_is_refused_and_named(field):
    recorded, now = _recipe(), _recipe(**{field: CHANGES[field]})
    assert recorded.key() != now.key(), "an identity field is hashed into the cache key"
    with pytest.raises(RecipeMismatchError, match="differs in") as err:
        recorded.check(now, "Refit it.")
    message = str(err.value)
    assert json.dumps(getattr(now, field), sort_keys=True)[:40] in message and "Refit it." in message
    if field == "scorer_version":
        assert "the version of scorer diffpath_fused: recorded \"1+1+1\", today \"1+1+2\"" in message


def test_identity_fields_are_the_ones_the_issue_names():
    assert set(IDENTITY_FIELDS) == {"weights_sha256", "model_config", "preprocessing", "scorer", "scorer_version", "seed", "seed_rule", "device",
                                    "precision", "tf32", "fast_path", "compile"}


@pytest.mark.parametrize("field,value", [("weights_path", "/elsewhere/model.pt"), ("network_batch", 8), ("extra", {}),
                                         ("weights_source", "hf://x/y/z.pt"), ("trained_on", "")])
def test_recorded_fields_are_never_compared_or_hashed(field, value):
    recorded, now = _recipe(), _recipe(**{field: value})
    assert recorded.check(now) == [] and recorded.key() == now.key(), "the same sha256 at another path is the same model"


def test_another_device_kind_warns_naming_both():
    recorded, now = _recipe(), _recipe(device="cuda:NVIDIA H200")
    assert recorded.key() != now.key(), "device kind is in the cache key"
    (warning,) = recorded.check(now)
    assert "'cpu'" in warning and "'cuda:NVIDIA H200'" in warning


def test_an_old_record_without_a_version_gets_a_refit_error(tmp_path):
    data = _recipe().to_dict()
    del data["scorer_version"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    with pytest.raises(RecipeMismatchError, match=r"no scorer version.*older zsad.*Refit the detector"):
        FeatureRecipe.read(tmp_path / "old.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(RecipeMismatchError, match=r"broken\.json is damaged"):
        FeatureRecipe.read(tmp_path / "broken.json")
    with pytest.raises(RecipeMismatchError, match="No feature recipe at"):
        FeatureRecipe.read(tmp_path / "missing.json")


def test_recipe_for_records_the_scorer_and_the_backbone():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from helpers import random_backbone

    import zsad

    backbone = random_backbone()
    backbone.identity = {"sha256": "ef" * 32, "format": "zsad", "model_config": {"dim": 8}, "use_ema": True}
    scorer = zsad.build_scorer("diffpath_fused", network_batch=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recipe = recipe_for(scorer, backbone, {"image_size": 16, "center_crop": None, "options": {"count": 5}}, 3, "cpu")
    assert recipe.scorer == scorer.options() and recipe.scorer_version == scorer.version == "1+1+1"
    assert recipe.preprocessing == {"image_size": 16, "center_crop": None}, "dataset options are not preprocessing"
    assert recipe.network_batch == 20 and recipe.seed == 3 and recipe.weights_sha256 == "ef" * 32 and recipe.use_ema is True
