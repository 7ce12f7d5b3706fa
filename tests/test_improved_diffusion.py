"""Issue 4: published improved-diffusion checkpoints, checked against the reference test vectors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES as F

import zsad
from zsad.diffusion.improved_diffusion import PRESETS, key_shapes, resolve_config
from zsad.errors import BackboneLoadError

assert (F / "inputs.pt").is_file(), f"improved-diffusion test vectors missing from {F}: they are part of the repository (git checkout tests/fixtures)."


def load(name: str):
    return torch.load(F / name, weights_only=True)


@pytest.fixture(scope="module")
def backbone():
    return zsad.load_backbone(F / "small_state_dict.pt", format="improved-diffusion", config=F / "small_config.json")


@pytest.fixture(scope="module")
def x0():
    return load("inputs.pt")["x0"]


def test_auto_format_detection(backbone):
    auto = zsad.load_backbone(F / "small_state_dict.pt", config=F / "small_config.json")
    assert type(auto) is type(backbone) and auto.fingerprint == backbone.fingerprint


def test_eps_at_ddim10_steps(backbone, x0):
    ref = load("eps_at_t.pt")
    assert ref["original_t"].tolist() == zsad.diffusion.ddim_timesteps(4000, 10).tolist()
    with torch.no_grad():
        for k, t in enumerate(ref["original_t"].tolist()):
            eps = backbone.predict_eps(x0, torch.full((4,), t))
            torch.testing.assert_close(eps, ref["eps"][k], atol=5e-5, rtol=1e-4)
        out = backbone.unet(x0, torch.full((4,), 500.0))  # learned-σ half of out.2 is loaded too
    torch.testing.assert_close(out[:, 3:], ref["var_values_k5"], atol=5e-5, rtol=1e-4)
    torch.testing.assert_close(ref["unet_timesteps"][:, 0], torch.arange(10, dtype=torch.float32) * 100)


def test_unet_intermediates_and_time_embedding(backbone, x0):
    from zsad.diffusion.improved_unet import timestep_embedding

    ref = load("unet_intermediates.pt")
    t = torch.as_tensor(ref["unet_timestep"], dtype=torch.float32).reshape(-1)
    emb_in = timestep_embedding(t, 32)
    torch.testing.assert_close(emb_in, ref["timestep_embedding_in"], atol=1e-4, rtol=0)
    test_t = torch.as_tensor(ref["timestep_embedding_test"]["t"], dtype=torch.float32)
    for dim in (32, 128):
        torch.testing.assert_close(timestep_embedding(test_t, dim), ref["timestep_embedding_test"][f"dim{dim}"], atol=1e-4, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(backbone.unet.time_embed(emb_in), ref["time_embed_out"], atol=5e-5, rtol=1e-4)
        torch.testing.assert_close(backbone.unet(ref["x"], t), ref["unet_output"], atol=5e-5, rtol=1e-4)
        hidden, down = ref["x"], []
        emb = backbone.unet.time_embed(emb_in)
        for block in backbone.unet.input_blocks:
            hidden = block(hidden, emb)
            down.append(hidden)
        for got, want in zip(down, ref["down_sub2"]):
            torch.testing.assert_close(got[:, :, ::2, ::2], want, atol=5e-5, rtol=1e-4)
        torch.testing.assert_close(backbone.unet.middle_block(hidden, emb), ref["middle"], atol=5e-5, rtol=1e-4)


def test_schedule_and_spacing():
    from zsad.diffusion.schedule import cosine_alphas_cumprod, ddim_stride, ddim_timesteps

    ref = load("schedule.pt")
    ab = cosine_alphas_cumprod(4000)
    torch.testing.assert_close(ab, ref["cosine4000_alphas_cumprod"].to(torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(1 - ab / torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]]), ref["cosine4000_betas"].to(torch.float64), atol=1e-12, rtol=0)
    assert ddim_timesteps(4000, 10).tolist() == torch.as_tensor(ref["ddim10_timestep_map"]).tolist()
    torch.testing.assert_close(ab[ddim_timesteps(4000, 10)], ref["ddim10_alphas_cumprod"].to(torch.float64), atol=1e-12, rtol=0)
    for name, steps in ref["space_timesteps_examples"].items():
        n = int(str(name).removeprefix("ddim"))
        assert sorted(ddim_timesteps(4000, n).tolist()) == sorted(int(s) for s in steps), name
    assert ddim_stride(1000, 10) == 100 and ddim_timesteps(1000, 10)[-1] == 900


@pytest.mark.parametrize("clip", [True, False])
def test_ddim_inversion_and_diffpath_6d_statistics(backbone, x0, clip):
    from zsad.scoring.scorers.trajectory import ddim_invert

    ref = load("ddim10_inversion.pt")["clip_denoised_true" if clip else "clip_denoised_false"]
    with torch.no_grad():
        inv = ddim_invert(backbone, x0, 10, clip_denoised=clip)
    torch.testing.assert_close(inv.xt[-1], ref["xT"], atol=2e-4, rtol=0)
    if clip:
        torch.testing.assert_close(inv.eps, ref["eps"], atol=2e-4, rtol=0)
        torch.testing.assert_close(inv.xt, ref["xt"], atol=2e-4, rtol=0)
        torch.testing.assert_close(inv.raw_eps, ref["raw_model_eps"], atol=2e-4, rtol=0)
        assert torch.equal(inv.xt[-1], inv.eps[-1])  # ᾱ'_next of the last step is 0
    feats = zsad.build_scorer("diffpath_6d", steps=10, clip_denoised=clip)(backbone, x0, [0, 1, 2, 3])
    assert feats.dtype == torch.float64 and feats.shape == (4, 6)
    torch.testing.assert_close(feats, ref["stats6"].to(torch.float64), rtol=1e-4, atol=0)
    one = zsad.build_scorer("diffpath_1d", steps=10, clip_denoised=clip)(backbone, x0, [0, 1, 2, 3])
    torch.testing.assert_close(one[:, 0], torch.as_tensor(ref["stats"]["deps_dt_sq_sqrt"], dtype=torch.float64), rtol=1e-4, atol=0)


def test_clamping_matters(backbone, x0):
    """Guard against a loader that silently skips the clamp: clip on/off must give different statistics."""
    on = zsad.build_scorer("diffpath_6d", steps=10, clip_denoised=True)(backbone, x0, [0, 1, 2, 3])
    off = zsad.build_scorer("diffpath_6d", steps=10, clip_denoised=False)(backbone, x0, [0, 1, 2, 3])
    assert ((on - off).abs() / on.abs()).max() > 1e-3


@pytest.mark.parametrize("table, preset", [("celeba32_keys.json", "diffpath-celeba32"), ("imagenet64_keys.json", "openai-imagenet64")])
def test_full_size_key_tables(table, preset):
    spec = json.loads((F / table).read_text())
    expected = {name: tuple(shape) for name, shape in spec["keys"].items()}
    assert list(key_shapes(PRESETS[preset])) == list(expected)
    assert key_shapes(PRESETS[preset]) == expected
    # The same table from the fixture's own kwargs (YAML merged over defaults).
    assert key_shapes(resolve_config(spec["create_model_and_diffusion_kwargs"])) == expected
    assert sum(torch.Size(s).numel() for s in expected.values()) == spec["num_elements"]


def _small_state():
    return torch.load(F / "small_state_dict.pt", weights_only=True)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda sd: sd.update({"out.2.weightx": sd.pop("out.2.weight")}), r"1 missing keys: out.2.weight; 1 unexpected keys: out.2.weightx"),
        (lambda sd: sd.pop("middle_block.1.qkv.bias"), r"1 missing keys: middle_block.1.qkv.bias"),
        (lambda sd: sd.update({"out.2.bias": torch.zeros(3)}), r"shape mismatches: out.2.bias: file \(3,\) vs model \(6,\)"),
    ],
)
def test_mismatched_state_dicts_give_clear_errors(tmp_path, mutate, message):
    sd = _small_state()
    mutate(sd)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(BackboneLoadError, match=message):
        zsad.load_backbone(path, format="improved-diffusion", config=F / "small_config.json")


def test_wrong_preset_names_the_one_that_fits(tmp_path):
    with torch.device("meta"):
        model = PRESETS["diffpath-celeba32"].build()
    sd = {k: torch.zeros(v.shape) for k, v in model.state_dict().items()}
    path = tmp_path / "celeba_like.pt"
    torch.save(sd, path)
    with pytest.raises(BackboneLoadError, match="preset that fits this file is: diffpath-celeba32"):
        zsad.load_backbone(path, config="openai-imagenet64")
    backbone = zsad.load_backbone(path, config="diffpath-celeba32")
    assert backbone.num_timesteps == 4000 and backbone.image_size == 32
    with pytest.raises(BackboneLoadError, match="needs backbone.config"):
        zsad.load_backbone(path)


def test_evaluate_runs_unchanged_on_an_improved_diffusion_backbone(tmp_path):
    from conftest import run_cli

    run_cli(
        "evaluate", "-c", "conf/eval/smoke.yaml", f"backbone.path={F / 'small_state_dict.pt'}", f"backbone.config={F / 'small_config.json'}",
        "scorers=[{name: diffpath_6d, options: {steps: 10}}]", "id=[digits]", "ood=[digits,noise]", "far_pairs=[]",
        "max_eval_images=12", "max_fit_images=24", "logger=none", f"output_dir={tmp_path}",
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["image_size"] == 32 and results["backbone"]["format"] == "improved-diffusion"
    assert results["backbone"]["model_config"]["num_channels"] == 32, "the config's content, not its path, identifies the model"
    assert [(r["id"], r["ood"]) for r in results["rows"]] == [("digits", "noise")]


def test_fast_path_equals_the_plain_path_within_fixture_tolerances(x0):
    """Fused attention + channels-last (the default) against the plain kernels, and both against the reference."""
    from zsad.diffusion.fast import set_fast_path

    plain = zsad.load_backbone(F / "small_state_dict.pt", format="improved-diffusion", config=F / "small_config.json", fast_path=False)
    fast = zsad.load_backbone(F / "small_state_dict.pt", format="improved-diffusion", config=F / "small_config.json")
    assert fast.fast_path == {"sdpa": True, "channels_last": True} and plain.fast_path == {"sdpa": False, "channels_last": False}
    assert any(getattr(m, "use_sdpa", False) for m in fast.modules()) and fast.unet.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    ref = load("ddim10_inversion.pt")["clip_denoised_true"]
    stats = {}
    for name, backbone in (("plain", plain), ("fast", fast)):
        with torch.no_grad():
            eps = backbone.predict_eps(x0, torch.full((4,), 1200))
        stats[name] = zsad.build_scorer("diffpath_6d", steps=10, clip_denoised=True, network_batch=4)(backbone, x0, seed=0)
        torch.testing.assert_close(stats[name], ref["stats6"].to(torch.float64), rtol=1e-4, atol=0)
        assert eps.is_contiguous()
    torch.testing.assert_close(stats["fast"], stats["plain"], rtol=1e-4, atol=0)
    set_fast_path(fast, sdpa=False, channels_last=False)  # switching back gives the plain kernels exactly
    assert torch.equal(zsad.build_scorer("diffpath_6d", steps=10, network_batch=4)(fast, x0, seed=0), stats["plain"])


def test_inference_blocks_write_in_place_bit_for_bit_and_attention_uses_the_fused_kernel(x0):
    """Without autograd, ResBlock/AttentionBlock reuse their own buffers (same operations, same order):
    the plain kernels give the autograd path's output exactly; the fast path calls PyTorch's fused CPU
    attention kernel, not the math fallback (which 3-D or strided inputs silently select)."""
    from torch.profiler import ProfilerActivity, profile

    plain = zsad.load_backbone(F / "small_state_dict.pt", format="improved-diffusion", config=F / "small_config.json", fast_path=False)
    t = torch.full((4,), 1200)
    with torch.inference_mode():
        in_place = plain.predict_eps(x0, t)
    with torch.enable_grad():
        autograd = plain.predict_eps(x0.clone().requires_grad_(True), t)
    assert torch.equal(in_place, autograd.detach())
    fast = zsad.load_backbone(F / "small_state_dict.pt", format="improved-diffusion", config=F / "small_config.json")
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fast.predict_eps(x0, t)
    ops = {e.key for e in prof.key_averages()}
    assert any("flash_attention" in op for op in ops) and "aten::bmm" not in ops, sorted(ops)


@pytest.mark.parametrize("scale_shift,c_in,c_out", [(True, 32, 32), (False, 32, 32), (False, 32, 64), (True, 64, 32)])
def test_resblock_in_place_branches_equal_the_autograd_path(scale_shift, c_in, c_out):
    """Every branch of the in-place ResBlock (scale-shift or additive embedding, identity or 1×1 skip),
    bit for bit, and the block's input is left as it was."""
    from zsad.diffusion.improved_unet import ResBlock

    torch.manual_seed(0)
    block = ResBlock(c_in, c_out, emb_dim=16, dropout=0.0, scale_shift=scale_shift).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.2)
    x, emb = torch.randn(3, c_in, 8, 8), torch.randn(3, 16)
    before = x.clone()
    with torch.inference_mode():
        in_place = block(x, emb)
    assert torch.equal(x, before)
    with torch.enable_grad():
        autograd = block(x.clone().requires_grad_(True), emb)
    assert torch.equal(in_place, autograd.detach())
