"""diffpath_v2 and recon compute what docs/method.md §3.1 and §3.3 describe, checked numerically.

The backbone predicts ε̂(x, t) = a_t·x + b_t·c + g_t·roll(x) (c a per-channel offset, roll one pixel
along the width), so a float64 reference can recompute every network call. The references below are
written from the method description, not from zsad's helpers: they use only the schedule
(`cosine_alphas_cumprod`, `ddim_timesteps`), the noise RNG (`per_image_noise`) and kornia's SSIM map.

zsad works in float32 (x_t, ε̂, SSIM) and sums in float64; the references work in float64 from the same
float32 inputs. Tolerances (see `assert_matches`): a feature passes when |ours − ref| ≤ rtol·(|ref| + scale),
where `scale` is the magnitude that float32 rounding is relative to:
- diffpath_v2: Σ|terms| of the moment (Σ|ẽ|, Σẽ², Σ|ẽ|³, Σ|d|, Σd², Σ|d|³). Each term carries a rounding
  error relative to itself, so the sum's error is bounded by ~u·Σ|terms|, not by |Σ terms|: the signed odd
  moments cancel (here Σẽ³ is 2–40× smaller than Σ|ẽ|³; in general it can be ~0), so a plain relative
  error means little there. For the even and |·| moments scale = |ref|, i.e. the check is 2e-6 relative.
- recon MSE: the MSE itself (its terms are ≥ 0), so the check is 2e-6 relative.
- recon dSSIM = mean(1 − S): mean|S|. kornia's float32 SSIM map is off from the float64 one by up to
  ~3e-6 absolute (measured), an error relative to S ≈ 1, not to the small 1 − S.
rtol is 1e-6 everywhere except the DDIM inversion under the real cosine schedule (RTOL_INVERSION_COSINE).
`test_recon_mse_at_small_t_start_is_exact` pins a fixed defect: recon took sqrt(1 − ᾱ_t) in float32,
1.8e-4 relative off at t_start = 1.
Every `test_*_mutation_*` shows that a deliberately wrong reference misses by far more than these
tolerances, so the comparison can fail.
"""

from __future__ import annotations

import math

import helpers
import pytest
import torch
from helpers import analytic_eps
from kornia.metrics import ssim

import zsad
from zsad.diffusion.schedule import cosine_alphas_cumprod, ddim_timesteps
from zsad.scoring.scorers import per_image_noise

T = 1000
SIZE = 16
RTOL = 1e-6
# DDIM inversion under the cosine schedule: step 0 divides by sqrt(1 − ᾱ_0) = 6.4e-3 twice, in the implied
# noise (s_0 − sqrt(ᾱ_0)·x0)/sqrt(1 − ᾱ_0) and in ε' = (sqrt(1/ᾱ_0)·s_0 − x̂0)/sqrt(1/ᾱ_0 − 1): both are
# differences of O(1) float32 numbers that nearly cancel, so float32 rounding (u = 6e-8) is amplified 156×,
# ~1e-5 absolute in e_0 (7.5e-6 measured) and, through ε'_0, in every later state. With errors of typical size
# 0.1–0.3 that is up to ~1e-4 per element, ~1e-6 on the summed features (≤ 7.5e-7 measured over 12 image sets).
# The level scales with 1/|e|: a first version of this backbone with 5× smaller b_t and 4× smaller g_t (so
# smaller errors) gave 1.2e-5, so 1e-5 (a 13× margin here) is tied to this backbone; it is still 500× below
# the smallest mutation. The same recursion under a well-conditioned schedule (1 − ᾱ_0 = 0.1) is checked at RTOL.
RTOL_INVERSION_COSINE = 1e-5
MUTATION_FACTOR = 10  # a wrong reference must miss by at least 10× the tolerance

class AnalyticBackbone(helpers.AnalyticBackbone):
    """The closed-form ε̂ of tests/helpers.py, here only ever called in float32 (what zsad computes in)."""

    def __init__(self, alphas_cumprod: torch.Tensor | None = None):
        super().__init__(alphas_cumprod, SIZE)

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert x_t.dtype == torch.float32 and t.dtype == torch.int64
        return analytic_eps(x_t, t)


COSINE = cosine_alphas_cumprod(T)
# 0.9·ᾱ: 1 − ᾱ_0 = 0.1, so the inversion's first step is well conditioned in float32.
WELL_CONDITIONED = 0.9 * cosine_alphas_cumprod(T)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1


IDS = torch.tensor([12345, 2**62 + 7, 99], dtype=torch.int64)


def ssim_map(x0: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
    """S per pixel and channel between images in [-1, 1] (Gaussian window 11, data range 1)."""
    return ssim((x0 + 1) / 2, (x0_hat + 1) / 2, window_size=11, max_val=1.0)


# --------------------------------------------------------------------------------------------- references


def reference_diffpath_v2(
    x0: torch.Tensor,
    ids: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    steps: int,
    trajectory: str,
    weighting: str,
    shared_noise: bool,
    moments: str,
    clip_denoised: bool = True,
    mutation: str | None = None,
    time_range: list | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [B, 6], scale [B, 6]) in float64, from docs/method.md §3.1, one image and step at a time."""
    K = steps
    T = len(alphas_cumprod)
    if time_range is None:
        ts = ddim_timesteps(T, K).tolist()
    else:  # K steps evenly spaced from first·(T−1) to last·(T−1), rounded to integers
        ts = [round(time_range[0] * (T - 1) + k * (time_range[1] - time_range[0]) * (T - 1) / (K - 1)) for k in range(K)]
    noise = per_image_noise(ids, x0.shape[1:], 1 if shared_noise else K).to(torch.float64)
    feats, scales = [], []
    for i in range(len(x0)):
        x = x0[i : i + 1].to(torch.float64)
        errors, x0_hats = [], []
        if trajectory == "forward":
            for k, t in enumerate(ts):
                ab = float(alphas_cumprod[t])
                eps = noise[i : i + 1, 0 if shared_noise else k]
                x_t = math.sqrt(ab) * x + math.sqrt(1 - ab) * eps
                eps_hat = analytic_eps(x_t, torch.tensor([t]))
                errors.append(eps_hat - eps)
                x0_hat = (x_t - math.sqrt(1 - ab) * eps_hat) / math.sqrt(ab)
                x0_hats.append(x0_hat if mutation == "x0_hat_not_clamped" else x0_hat.clamp(-1, 1))
        else:  # improved-diffusion's ddim_reverse_sample_loop, eta = 0, ᾱ after the last step = 0
            state = x
            for k, t in enumerate(ts):
                ab = float(alphas_cumprod[t])
                ab_next = float(alphas_cumprod[ts[k + 1]]) if k + 1 < K else 0.0
                raw = analytic_eps(state, torch.tensor([t]))
                implied = (state - math.sqrt(ab) * x) / math.sqrt(1 - ab)  # the noise the state carries
                errors.append(raw - implied)
                x0_hats.append(((state - math.sqrt(1 - ab) * raw) / math.sqrt(ab)).clamp(-1, 1))
                pred = math.sqrt(1 / ab) * state - math.sqrt(1 / ab - 1) * raw
                if clip_denoised and mutation != "inversion_not_clipped":
                    pred = pred.clamp(-1, 1)
                eps = (math.sqrt(1 / ab) * state - pred) / math.sqrt(1 / ab - 1)
                state = pred * math.sqrt(ab_next) + math.sqrt(1 - ab_next) * eps
        e = torch.cat(errors)  # [K, 3, H, W]
        if mutation == "error_sign_flipped":
            e = -e
        if weighting != "none":
            s = ssim_map(x.expand_as(e), torch.cat(x0_hats))
            if weighting == "ssim":
                w = ((1 - s) if mutation == "ssim_weight_without_half" else (1 - s) / 2).clamp(0, 1)
            elif weighting == "one_minus_ssim":
                w = (1 - s).clamp(0, 2)
            else:  # amplify: the plain error plus the dissimilarity-weighted error
                w = 1 + (1 - s).clamp(min=0)
            e = w * e
        factor = 1 if mutation == "no_K_factor" else K
        d = factor * (e[1:] - e[:-1])
        signed = [e.sum(), (e**2).sum(), (e**3).sum(), d.sum(), (d**2).sum(), (d**3).sum()]
        absolute = [e.abs().sum(), (e**2).sum(), (e.abs() ** 3).sum(), d.abs().sum(), (d**2).sum(), (d.abs() ** 3).sum()]
        norms = [absolute[0], absolute[1].sqrt(), absolute[2] ** (1 / 3), absolute[3], absolute[4].sqrt(), absolute[5] ** (1 / 3)]
        feats.append(torch.stack({"signed": signed, "abs": absolute, "norms": norms}[moments]))
        scales.append(torch.stack(norms if moments == "norms" else absolute))
    return torch.stack(feats), torch.stack(scales)


def recon_timesteps(level: float, steps: int) -> list[int]:
    """t_start = round(level·T) kept in [1, T − 1]; `steps` equal strides down to 0, rounded, repeats dropped."""
    t_start = max(1, min(T - 1, round(level * T)))
    out: list[int] = []
    for i in range(steps + 1):
        t = round(t_start * (steps - i) / steps)
        if not out or out[-1] != t:
            out.append(t)
    return out


def reference_recon(
    x0: torch.Tensor, ids: torch.Tensor, levels: list[float], steps: int, mutation: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [B, 2L], scale [B, 2L]) in float64, from docs/method.md §3.3 (DDIM, eta = 0, raw ε̂ in the update)."""
    noise = per_image_noise(ids, x0.shape[1:], len(levels)).to(torch.float64)
    x0 = x0.to(torch.float64)
    feats, scales = [], []
    for j, level in enumerate(levels):
        ts = recon_timesteps(level, steps)
        ab = [float(COSINE[t]) for t in ts]
        x = math.sqrt(ab[0]) * x0 + math.sqrt(1 - ab[0]) * noise[:, j]
        for k in range(len(ts) - 1):
            eps = analytic_eps(x, torch.full((len(x0),), ts[k]))
            x0_hat = (x - math.sqrt(1 - ab[k]) * eps) / math.sqrt(ab[k])
            if mutation != "x0_hat_not_clamped":
                x0_hat = x0_hat.clamp(-1, 1)
            if mutation == "eps_rederived_from_clamped_x0_hat":
                eps = (x - math.sqrt(ab[k]) * x0_hat) / math.sqrt(1 - ab[k])
            x = x0_hat if ts[k + 1] == 0 else math.sqrt(ab[k + 1]) * x0_hat + math.sqrt(1 - ab[k + 1]) * eps
        rec = x.clamp(-1, 1)
        s = ssim_map(x0, rec)
        feats += [((rec - x0) ** 2).flatten(1).mean(1), (1 - s).flatten(1).mean(1)]
        scales += [feats[-2], s.abs().flatten(1).mean(1)]
    return torch.stack(feats, dim=1), torch.stack(scales, dim=1)


# ------------------------------------------------------------------------------------------------ checks


def deviation(ours: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor) -> float:
    """max |ours − ref| / (|ref| + scale): a feature passes at rtol when this is ≤ rtol."""
    return ((ours - ref).abs() / (ref.abs() + scale)).max().item()


def assert_matches(ours: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor, rtol: float) -> None:
    """|ours − ref| ≤ rtol·|ref| + rtol·scale per feature (assert_close on features divided by their scale)."""
    assert ours.dtype == torch.float64 and ours.shape == ref.shape
    assert (scale > 0).all()
    torch.testing.assert_close(ours / scale, ref / scale, rtol=rtol, atol=rtol)


def diffpath_v2(backbone: helpers.AnalyticBackbone, images: torch.Tensor, **options) -> torch.Tensor:
    return zsad.build_scorer("diffpath_v2", network_batch=4, **options)(backbone, images, IDS)


FORWARD_CASES = [
    dict(steps=steps, shared_noise=shared, weighting=weighting, moments=moments)
    for steps, shared, weighting, moments in [
        (5, True, "ssim", "signed"),
        (5, True, "ssim", "abs"),
        (5, True, "none", "signed"),
        (5, True, "none", "abs"),
        (5, False, "ssim", "signed"),
        (5, False, "ssim", "abs"),
        (5, False, "none", "signed"),
        (5, False, "none", "abs"),
        (10, True, "ssim", "signed"),
        (10, False, "none", "abs"),
    ]
]


@pytest.mark.parametrize("case", FORWARD_CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_diffpath_v2_forward_matches_reference(images, case):
    ours = diffpath_v2(AnalyticBackbone(), images, trajectory="forward", **case)
    ref, scale = reference_diffpath_v2(images, IDS, COSINE, trajectory="forward", **case)
    assert_matches(ours, ref, scale, RTOL)


INVERSION_CASES = [
    dict(steps=5, weighting=weighting, moments=moments, clip_denoised=clip)
    for weighting, moments, clip in [
        ("ssim", "signed", True),
        ("ssim", "abs", True),
        ("none", "signed", True),
        ("none", "abs", True),
        ("none", "signed", False),
    ]
]


@pytest.mark.parametrize("schedule", ["cosine", "well_conditioned"])
@pytest.mark.parametrize("case", INVERSION_CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_diffpath_v2_ddim_inversion_matches_reference(images, case, schedule):
    ab, rtol = (COSINE, RTOL_INVERSION_COSINE) if schedule == "cosine" else (WELL_CONDITIONED, RTOL)
    ours = diffpath_v2(AnalyticBackbone(ab), images, trajectory="ddim_inversion", **case)
    ref, scale = reference_diffpath_v2(images, IDS, ab, trajectory="ddim_inversion", shared_noise=True, **case)
    assert_matches(ours, ref, scale, rtol)


DIFFPATH_MUTATIONS = [
    # (mutation, trajectory, weighting, moments, schedule): a configuration where the mutation matters
    ("ssim_weight_without_half", "forward", "ssim", "abs", "cosine"),
    ("no_K_factor", "forward", "none", "abs", "cosine"),
    ("error_sign_flipped", "forward", "none", "signed", "cosine"),
    ("error_sign_flipped", "ddim_inversion", "ssim", "signed", "cosine"),
    ("x0_hat_not_clamped", "forward", "ssim", "signed", "cosine"),
    ("inversion_not_clipped", "ddim_inversion", "none", "abs", "cosine"),
    ("inversion_not_clipped", "ddim_inversion", "ssim", "signed", "well_conditioned"),
]


@pytest.mark.parametrize("mutation,trajectory,weighting,moments,schedule", DIFFPATH_MUTATIONS)
def test_diffpath_v2_mutation_is_detected(images, mutation, trajectory, weighting, moments, schedule):
    ab = COSINE if schedule == "cosine" else WELL_CONDITIONED
    rtol = RTOL_INVERSION_COSINE if (trajectory, schedule) == ("ddim_inversion", "cosine") else RTOL
    options = dict(steps=5, trajectory=trajectory, weighting=weighting, moments=moments, shared_noise=True)
    ours = diffpath_v2(AnalyticBackbone(ab), images, **options)
    ref, scale = reference_diffpath_v2(images, IDS, ab, **options)
    wrong, wrong_scale = reference_diffpath_v2(images, IDS, ab, mutation=mutation, **options)
    assert_matches(ours, ref, scale, rtol)
    assert deviation(ours, wrong, wrong_scale) > MUTATION_FACTOR * rtol, f"{mutation} is not told apart"
    with pytest.raises(AssertionError):
        assert_matches(ours, wrong, wrong_scale, rtol)


def test_reference_error_sign_mutation_vanishes_under_abs_moments(images):
    """Sanity of the references: a flipped error sign changes no |·| or even moment."""
    options = dict(steps=5, trajectory="forward", weighting="none", moments="abs", shared_noise=True)
    ref, _ = reference_diffpath_v2(images, IDS, COSINE, **options)
    flipped, _ = reference_diffpath_v2(images, IDS, COSINE, mutation="error_sign_flipped", **options)
    torch.testing.assert_close(flipped, ref, rtol=1e-12, atol=0)


# Levels whose chain starts at t_start ≥ 10: every feature at RTOL. 0.9999 gives t_start = 999, the min(T − 1, ·)
# bound; its first x̂0 divides float32 rounding by sqrt(ᾱ_999) = 4.9e-5. Nearly every pixel is then clamped to
# ±1 and the error goes with it: 3e-8 relative on this test's MSE, but an image set with a pixel that lands
# inside [−1, 1] showed 1.9e-6 relative (of the 2e-6 allowed), so change the data or levels with care.
RECON_LEVELS = [0.1, 0.25, 0.4, 0.7, 0.9999]
# t_start = 1 (the max(1, ·) bound) and 5. zsad's recon takes sqrt(1 − ᾱ_t) in float32 from ᾱ_t rounded to
# float32: for t ≤ 5, 1 − ᾱ_t ≤ 3.2e-4 and that costs up to 9e-5 relative in sqrt(1 − ᾱ_t) (t = 1), ~15 float32
# ulps of x_t, and 1.8e-4 (t_start = 1) / 7e-5 (t_start = 5) relative on the MSE. With sqrt(ᾱ), sqrt(1 − ᾱ) taken
# in float64 and then cast (as diffpath_v2 and ddim_invert do) the MSE matches to ≤ 6.4e-7 relative.
SMALL_T_LEVELS = [0.0004, 0.005]


def test_recon_timesteps_reference():
    """The reference's step rule on the cases the recon tests use (dedup, both bounds of t_start)."""
    assert recon_timesteps(0.0004, 3) == [1, 0]
    assert recon_timesteps(0.1, 3) == [100, 67, 33, 0]
    assert recon_timesteps(0.9999, 5) == [999, 799, 599, 400, 200, 0]
    assert recon_timesteps(0.005, 10) == [5, 4, 3, 2, 1, 0]


def recon(images: torch.Tensor, levels: list[float], steps: int) -> torch.Tensor:
    return zsad.build_scorer("recon", levels=levels, steps=steps, network_batch=4)(AnalyticBackbone(), images, IDS)


@pytest.mark.parametrize("steps", [3, 5, 10])
def test_recon_matches_reference(images, steps):
    levels = RECON_LEVELS + SMALL_T_LEVELS
    ours = recon(images, levels, steps)
    ref, scale = reference_recon(images, IDS, levels, steps)
    assert_matches(ours, ref, scale, RTOL)


@pytest.mark.parametrize("steps", [3, 10])
def test_recon_mse_at_small_t_start_is_exact(images, steps):
    ours = recon(images, SMALL_T_LEVELS, steps)
    ref, scale = reference_recon(images, IDS, SMALL_T_LEVELS, steps)
    assert_matches(ours[:, 0::2], ref[:, 0::2], scale[:, 0::2], RTOL)


@pytest.mark.parametrize("mutation", ["x0_hat_not_clamped", "eps_rederived_from_clamped_x0_hat"])
def test_recon_mutation_is_detected(images, mutation):
    levels, steps = [0.1, 0.4, 0.7], 5
    ours = recon(images, levels, steps)
    ref, scale = reference_recon(images, IDS, levels, steps)
    wrong, wrong_scale = reference_recon(images, IDS, levels, steps, mutation=mutation)
    assert_matches(ours, ref, scale, RTOL)
    assert deviation(ours, wrong, wrong_scale) > MUTATION_FACTOR * RTOL, f"{mutation} is not told apart"


NEW_OPTION_CASES = [
    dict(trajectory="forward", weighting="one_minus_ssim", moments="signed"),
    dict(trajectory="forward", weighting="amplify", moments="abs"),
    dict(trajectory="forward", weighting="ssim", moments="norms"),
    dict(trajectory="forward", weighting="none", moments="norms", time_range=[0.05, 0.7]),
    dict(trajectory="ddim_inversion", weighting="amplify", moments="norms"),
]


@pytest.mark.parametrize("case", NEW_OPTION_CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_diffpath_v2_open_choices_match_reference(images, case):
    """The weightings 1−S and 1+(1−S), the norm features and a custom time range, against the float64 reference."""
    options = dict(steps=5, shared_noise=True, **case)
    ours = diffpath_v2(AnalyticBackbone(), images, **options)
    ref, scale = reference_diffpath_v2(images, IDS, COSINE, **options)
    rtol = RTOL_INVERSION_COSINE if case["trajectory"] == "ddim_inversion" else RTOL
    assert_matches(ours, ref, scale, rtol)


def test_amplify_is_never_below_the_plain_error(images):
    """e ⊙ (1 + (1 − S)): every |weighted error| ≥ |plain error|, so Σ|ẽ| ≥ Σ|e| image by image."""
    plain = diffpath_v2(AnalyticBackbone(), images, steps=5, weighting="none", moments="abs")
    amplified = diffpath_v2(AnalyticBackbone(), images, steps=5, weighting="amplify", moments="abs")
    assert (amplified[:, 0] >= plain[:, 0]).all() and (amplified[:, 2] >= plain[:, 2]).all()


def test_msma_matches_a_hand_computation(images):
    levels, T = 4, 1000
    ours = zsad.build_scorer("msma", levels=levels, time_range=[0.1, 0.7], network_batch=4)(AnalyticBackbone(), images, IDS)
    ts = [round(0.1 * (T - 1) + j * 0.6 * (T - 1) / (levels - 1)) for j in range(levels)]
    eps = per_image_noise(IDS, images.shape[1:], 1)[:, 0].to(torch.float64)
    ref = torch.empty(len(images), levels, dtype=torch.float64)
    for i in range(len(images)):
        for j, t in enumerate(ts):
            ab = float(COSINE[t])
            x_t = math.sqrt(ab) * images[i : i + 1].to(torch.float64) + math.sqrt(1 - ab) * eps[i : i + 1]
            ref[i, j] = analytic_eps(x_t, torch.tensor([t])).pow(2).sum().sqrt()
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
