"""The feature cache: every ingredient of a feature is in the key (and nothing else), damaged entries are
recomputed, and runs sharing one cache folder at the same time both finish with the same table."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from conftest import REPO, ZSAD, cli_env, run_cli
from helpers import extraction_setup, recipe_of
from omegaconf import OmegaConf

from zsad.config.schema import DataConfig
from zsad.data import build_dataset
from zsad.scoring.extraction import extract_features
from zsad.scoring.feature_cache import FeatureCache


@pytest.fixture()
def setup(tmp_path):
    backbone, dataset, scorer, kw = extraction_setup(count=6)
    cache = FeatureCache(tmp_path / "cache")
    first = extract_features(backbone, scorer, dataset, cache, **kw)
    assert not first.from_cache
    return backbone, dataset, scorer, kw, cache, first


def _again(setup, scorer=None, dataset=None, batch_size=None, **recipe_changes):
    """Extract again into the same cache, the recipe rebuilt from (scorer, dataset) with `recipe_changes`."""
    backbone, ds, sc, kw, cache, _ = setup
    scorer, dataset = scorer or sc, dataset or ds
    recipe = recipe_of(scorer, backbone, dataset, **recipe_changes)
    return extract_features(backbone, scorer, dataset, cache, **{**kw, "recipe": recipe, "batch_size": batch_size or kw["batch_size"]})


def test_unchanged_inputs_and_loader_batch_size_reuse(setup):
    assert _again(setup).from_cache
    again = _again(setup, batch_size=3)
    assert again.from_cache and np.array_equal(again.features, setup[5].features)


@pytest.mark.parametrize("ingredient", ["weights_sha256", "model_config", "device", "precision", "tf32", "seed", "fast_path", "compile",
                                        "preprocessing", "seed_rule", "use_ema"])
def test_each_identity_field_of_the_recipe_recomputes(setup, ingredient):
    changes = {"weights_sha256": "0" * 64, "model_config": {"num_channels": 64}, "device": "cuda:NVIDIA H200", "precision": "bf16-mixed",
               "tf32": True, "seed": 1, "fast_path": False, "compile": "max-autotune", "preprocessing": {"image_size": 16, "center_crop": 12},
               "seed_rule": "another rule", "use_ema": False}
    assert not _again(setup, **{ingredient: changes[ingredient]}).from_cache


@pytest.mark.parametrize("field,value", [("weights_path", "/elsewhere/model.ckpt"), ("network_batch", 64), ("extra", {"id_dataset": "x"})])
def test_recorded_but_not_identity_fields_reuse(setup, field, value):
    assert _again(setup, **{field: value}).from_cache


def test_scorer_options_and_version_recompute(setup, monkeypatch):
    from zsad.scoring.scorers import build_scorer

    assert not _again(setup, scorer=build_scorer("diffpath_v2", steps=4, network_batch=4)).from_cache
    scorer = setup[2]
    monkeypatch.setattr(type(scorer), "version", scorer.version + 1)
    assert not _again(setup).from_cache
    assert _again(setup, scorer=build_scorer("diffpath_v2", steps=3, network_batch=8)).from_cache, "network_batch is not a feature ingredient"


def test_dataset_file_identity_recomputes(setup, tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs" / "test"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    ds = lambda: build_dataset(OmegaConf.structured(DataConfig(name="imagefolder", root=str(tmp_path / "imgs"), split="test", image_size=16)))  # noqa: E731
    assert not _again(setup, dataset=ds()).from_cache
    assert _again(setup, dataset=ds()).from_cache
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(folder / "1.png")  # edited in place
    st = os.stat(folder / "1.png")
    os.utime(folder / "1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not _again(setup, dataset=ds()).from_cache


def test_improved_diffusion_identity_holds_the_config_content(tmp_path):
    from conftest import FIXTURES

    import zsad

    cfg = json.loads((FIXTURES / "small_config.json").read_text())
    (tmp_path / "a.json").write_text(json.dumps(cfg))
    (tmp_path / "b.json").write_text(json.dumps(cfg))
    a = zsad.load_backbone(FIXTURES / "small_state_dict.pt", config=tmp_path / "a.json")
    b = zsad.load_backbone(FIXTURES / "small_state_dict.pt", config=tmp_path / "b.json")
    assert a.identity == b.identity, "the same content at another path is the same model"
    kwargs = cfg.get("create_model_and_diffusion_kwargs", cfg)
    kwargs["diffusion_steps"] = 2000  # the same weights under another schedule: another ε̂(x, t)
    (tmp_path / "a.json").write_text(json.dumps(cfg))
    c = zsad.load_backbone(FIXTURES / "small_state_dict.pt", config=tmp_path / "a.json")
    assert c.identity != a.identity and c.identity["sha256"] == a.identity["sha256"]


@pytest.mark.parametrize("damage", ["truncated_npz", "garbage_meta", "wrong_rows", "truncated_shard"])
def test_damaged_entries_are_reported_and_recomputed(setup, damage, capsys):
    _, _, _, _, cache, first = setup
    folder = next(cache.root.glob("*/*/*/"))
    if damage == "truncated_npz":
        data = (folder / "features.npz").read_bytes()
        (folder / "features.npz").write_bytes(data[: len(data) // 2])
    elif damage == "garbage_meta":
        (folder / "meta.json").write_text("{not json")
    elif damage == "wrong_rows":
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps({**meta, "n": meta["n"] + 1}))
    else:  # an interrupted run left a damaged shard and no final files
        (folder / "meta.json").unlink()
        (folder / "shards").mkdir()
        (folder / "shards" / "part-old-r0-b000000.pt").write_bytes(b"PK\x03\x04 truncated")
    again = _again(setup)
    out = capsys.readouterr().out
    assert not again.from_cache and np.array_equal(again.features, first.features)
    assert ("damaged shard" if damage == "truncated_shard" else "damaged entry") in out
    assert _again(setup).from_cache


def test_concurrent_evaluations_share_one_cache(smoke_checkpoint, tmp_path):
    """Two runs started together on one cache folder (the paper configs all use outputs/feature_cache)."""
    common = [
        "evaluate", "-c", "conf/eval/smoke.yaml", f"backbone.path={smoke_checkpoint}", f"cache_dir={tmp_path / 'cache'}",
        "scorers=[{name: diffpath_v2, options: {steps: 5}}, {name: diffpath_6d, options: {steps: 5}}]", "logger=none", "plots=false",
    ]
    # one thread each: two processes of 2 threads on 2 cores spin against each other (122 s instead of 34 s here)
    procs = [subprocess.Popen([*ZSAD, *common, f"output_dir={tmp_path / name}"], cwd=REPO, env={**cli_env(), "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for name in ("a", "b")]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]
    tables = [json.loads((tmp_path / name / "results.json").read_text())["rows"] for name in ("a", "b")]
    assert tables[0] == tables[1]
    assert not list((tmp_path / "cache").rglob("part-*.pt")), "no shard left behind"
    # and a later run reads everything from the shared cache
    third = run_cli(*common, f"output_dir={tmp_path / 'c'}")
    assert "[extract]" not in third.stdout
    assert json.loads((tmp_path / "c" / "results.json").read_text())["rows"] == tables[0]
