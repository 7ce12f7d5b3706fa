"""Issue 3: scorers are deterministic per image, exact on hand-made cases, and fail loudly."""

from __future__ import annotations

import pytest
import torch
from helpers import NaNBackbone, OracleBackbone, ZeroBackbone, random_backbone

import zsad
from zsad.errors import ConfigError, FeatureError, UnknownNameError
from zsad.scoring.scorers import SCORERS, image_seeds
from zsad.scoring.scorers.diffpath_v2 import ssim_weight
from zsad.scoring.scorers.fused import V2_HALF_DEFAULTS

FAST = {
    "diffpath_v2": {"steps": 4},
    "diffpath_6d": {"steps": 4},
    "diffpath_1d": {"steps": 4},
    "recon": {"levels": [0.2, 0.5], "steps": 3},
    "diffpath_fused": {"steps": 4},
    "msma": {"levels": 3},
    "ufcod": {"steps": 4},
    "scoped": {"levels": 2},
}


@pytest.fixture(scope="module")
def backbone():
    return random_backbone()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(3)
    return torch.rand(14, 3, 16, 16, generator=g) * 2 - 1


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_features_do_not_depend_on_batch_size_or_order(backbone, images, name):
    scorer = zsad.build_scorer(name, network_batch=4, **FAST[name])
    ids = image_seeds(0, images)
    one = torch.cat([scorer(backbone, images[i : i + 1], ids[i : i + 1]) for i in range(len(images))])
    seven = torch.cat([scorer(backbone, images[i : i + 7], ids[i : i + 7]) for i in range(0, len(images), 7)])
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))
    shuffled = scorer(backbone, images[perm], ids[perm])
    assert one.dtype == torch.float64 and one.shape == (14, len(scorer.feature_names))
    assert torch.equal(one, seven), f"max diff {(one - seven).abs().max()}"
    assert torch.equal(shuffled, one[perm])
    assert torch.isfinite(one).all()


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_network_batch_changes_features_only_by_float_rounding(backbone, images, name):
    """network_batch is outside the cache key: it may move the last bits (kernel blocking), nothing more."""
    x = images[:6]
    a = zsad.build_scorer(name, network_batch=4, **FAST[name])(backbone, x, seed=0)
    b = zsad.build_scorer(name, network_batch=7, **FAST[name])(backbone, x, seed=0)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(a.abs().max()))
    assert zsad.build_scorer(name, network_batch=4).options() == zsad.build_scorer(name, network_batch=32).options()


def test_noise_is_seeded_by_the_pixels(backbone, images):
    scorer = zsad.build_scorer("diffpath_v2", steps=4, network_batch=4)
    x = torch.stack([images[0], images[1], images[0]])  # image 0 at two positions
    feats = scorer(backbone, x, seed=0)
    assert torch.equal(feats[0], feats[2]) and not torch.equal(feats[0], feats[1])
    alone = scorer(backbone, images[:1], seed=0)
    assert torch.equal(alone[0], feats[0]), "the same image, alone or in another batch, has the same features"
    seeds = image_seeds(0, x)
    assert seeds[0] == seeds[2] and seeds[0] != seeds[1]
    assert image_seeds(1, x)[0] != seeds[0], "the global seed changes every image's noise"
    nudged = images[:1].clone()
    nudged[0, 0, 0, 0] = torch.nextafter(nudged[0, 0, 0, 0], torch.tensor(2.0))
    assert image_seeds(0, nudged)[0] != seeds[0], "one bit of one pixel changes the seed"
    assert torch.equal(scorer(backbone, x, image_seeds(0, x)), feats), "ids default to image_seeds(seed, images)"


@pytest.mark.parametrize("weighting", ["none", "ssim"])
@pytest.mark.parametrize("shared", [True, False])
def test_oracle_backbone_gives_zero_error_features(weighting, shared):
    x0 = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    oracle = OracleBackbone(x0[0])
    feats = zsad.build_scorer("diffpath_v2", steps=10, weighting=weighting, shared_noise=shared)(oracle, x0.repeat(3, 1, 1, 1), [1, 2, 3])
    assert feats.abs().max() < 1e-3, feats
    # The same images with a useless backbone (ε̂ = 0) give large errors: the test can fail.
    zero = zsad.build_scorer("diffpath_v2", steps=10, weighting=weighting, shared_noise=shared)(ZeroBackbone(), x0.repeat(3, 1, 1, 1), [1, 2, 3])
    assert zero[:, 1].min() > 1.0


def test_ssim_weight_is_zero_where_the_prediction_is_exact():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    w = ssim_weight(x, x.clone())
    assert w.shape == x.shape and w.max() < 1e-6
    y = x.clone()
    y[:, :, :, 24:] = -y[:, :, :, 24:]  # change only the right quarter
    w = ssim_weight(x, y)
    assert w[..., :12].max() < 1e-6, "left of the window reach nothing changed"
    assert w[..., 26:].mean() > 0.2 and 0 <= w.min() and w.max() <= 1


def test_ddim_inversion_trajectory_option(backbone, images):
    ids = image_seeds(0, images[:4])
    fwd = zsad.build_scorer("diffpath_v2", steps=4, network_batch=4)(backbone, images[:4], ids)
    inv = zsad.build_scorer("diffpath_v2", steps=4, trajectory="ddim_inversion", network_batch=4)(backbone, images[:4], ids)
    absm = zsad.build_scorer("diffpath_v2", steps=4, moments="abs", network_batch=4)(backbone, images[:4], ids)
    assert not torch.equal(fwd, inv) and torch.isfinite(inv).all()
    assert (absm[:, [0, 2, 3, 5]] >= 0).all() and torch.equal(absm[:, [1, 4]], fwd[:, [1, 4]])


def test_non_finite_features_name_the_images():
    x = torch.full((4, 3, 8, 8), -0.5)
    x[2, 0, 0, 0] = 0.5
    with pytest.raises(FeatureError, match=r"batch positions \[2\]"):
        zsad.build_scorer("diffpath_6d", steps=3)(NaNBackbone(), x, [10, 11, 12, 13])


def test_unknown_scorer_and_option():
    with pytest.raises(UnknownNameError, match="Known scorers: diffpath_v2, diffpath_6d, diffpath_1d, recon, diffpath_fused, msma"):
        zsad.build_scorer("diffpath_v3")
    with pytest.raises(ConfigError, match="no option.*stepz.*Valid options"):
        zsad.build_scorer("diffpath_v2", stepz=3)
    with pytest.raises(ConfigError, match="trajectory"):
        zsad.build_scorer("diffpath_v2", trajectory="backward")


def test_diffpath_1d_from_6d_equals_a_separate_extraction(backbone, images):
    one = zsad.build_scorer("diffpath_1d", steps=4, network_batch=4)
    six = zsad.build_scorer("diffpath_6d", steps=4, network_batch=4)
    assert [s.options() for s in one.sources()] == [six.options()]
    f1, f6 = one(backbone, images, seed=0), six(backbone, images, seed=0)
    assert torch.equal(one.derive([f6]), f1)
    assert (one.derive([f6.numpy()]) == f1.numpy()).all(), "the numpy path (cached features) is bit-identical too"


@pytest.mark.parametrize("v2", [{}, {"trajectory": "ddim_inversion", "weighting": "none", "moments": "norms"}])
def test_diffpath_fused_is_the_concatenation_bit_for_bit(backbone, images, v2):
    fused = zsad.build_scorer("diffpath_fused", steps=4, network_batch=4, v2=v2)
    six = zsad.build_scorer("diffpath_6d", steps=4, network_batch=4)
    two = zsad.build_scorer("diffpath_v2", steps=4, network_batch=4, **{**V2_HALF_DEFAULTS, **v2})
    got = fused(backbone, images[:5], seed=0)
    assert got.shape == (5, 12) and fused.feature_names[0] == "6d_eps_sum" and fused.feature_names[6].startswith("v2_err")
    assert torch.equal(got, torch.cat([six(backbone, images[:5], seed=0), two(backbone, images[:5], seed=0)], dim=1))
    assert fused.network_evaluations_per_image(1000) == (4 if v2 else 8), "a shared inversion costs K evaluations, not 2K"


@pytest.mark.parametrize("option", [{"weighting": "ssim"}, {"weighting": "one_minus_ssim"}, {"weighting": "none"}, {"moments": "norms"},
                                    {"moments": "abs"}, {"shared_noise": False}, {"trajectory": "ddim_inversion"}, {"time_range": [0.1, 0.6]}])
def test_every_diffpath_v2_option_changes_the_features(backbone, images, option):
    base = zsad.build_scorer("diffpath_v2", steps=4, network_batch=4)(backbone, images[:4], seed=0)
    other = zsad.build_scorer("diffpath_v2", steps=4, network_batch=4, **option)(backbone, images[:4], seed=0)
    assert torch.isfinite(other).all() and not torch.allclose(base, other)


def test_new_option_values_are_checked():
    with pytest.raises(ConfigError, match="weighting='ssim2'"):
        zsad.build_scorer("diffpath_v2", weighting="ssim2")
    with pytest.raises(ConfigError, match="time_range"):
        zsad.build_scorer("diffpath_v2", time_range=[0.8, 0.2])
    with pytest.raises(ConfigError, match="v2 has no option"):
        zsad.build_scorer("diffpath_fused", v2={"stepz": 3})
    with pytest.raises(ConfigError, match="msma"):
        zsad.build_scorer("msma", levels=0)
