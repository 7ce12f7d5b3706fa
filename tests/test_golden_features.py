"""Golden features pin the code of every scorer version and every scorer default, not the processor.

Two records per case (tests/fixtures/golden_features.json):
* `float64_analytic`: what `features_and_maps` computes in float64 on the closed-form backbone of
  tests/helpers.py. Every operation runs in float64, so torch's kernel paths (AVX-512, AVX2, plain) agree
  exactly (measured: 0 difference between AVX-512, AVX2 and plain kernels; the noise is drawn in float64
  there, see `per_image_noise`); compared at rtol 1e-10 of each feature's largest magnitude. This is
  the check that pins the maths: a changed computation moves these numbers by orders of magnitude more.
* `float32_network`: the features of a tiny real UNet in float32, the path users run. Other instruction
  sets pick other float32 kernels, and the signed cubic sums cancel, so the tolerance is relative to each
  feature's spread over the batch (as the reference-parity tests do): FLOAT32_SPREAD_TOL, measured across
  ATEN_CPU_CAPABILITY=default, avx2 and avx512 (docs/method.md §2).

The `defaults` case of each scorer is `build_scorer(name)` as it stands, and records its resolved options:
changing any default fails here until the file is re-recorded on purpose. A changed computation fails until
the scorer's `version` is bumped and its features are recorded:

    .venv/bin/python tests/test_golden_features.py --record            # new versions / cases only
    .venv/bin/python tests/test_golden_features.py --rerecord NAME     # on purpose: NAME's current version
    .venv/bin/python tests/test_golden_features.py --check             # exit 0 when everything matches
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import AnalyticBackbone, random_backbone  # noqa: E402

GOLDEN = Path(__file__).parent / "fixtures" / "golden_features.json"
# Non-default cases: the paths the defaults do not take (SSIM weightings, inversion, per-step noise, norms, ...).
CASES = {
    "diffpath_v2": {
        "ssim_inversion": {"steps": 4, "trajectory": "ddim_inversion", "weighting": "ssim"},
        "plain_per_step_norms": {"steps": 4, "weighting": "none", "shared_noise": False, "moments": "norms", "time_range": [0.1, 0.9]},
        "one_minus_ssim_abs": {"steps": 3, "weighting": "one_minus_ssim", "moments": "abs"},
    },
    "diffpath_6d": {"unclipped": {"steps": 4, "clip_denoised": False}},
    "diffpath_1d": {"steps4": {"steps": 4}},
    "recon": {"two_levels": {"levels": [0.1, 0.4], "steps": 3}},
    "diffpath_fused": {"shared_inversion_ssim": {"steps": 4, "v2": {"trajectory": "ddim_inversion", "weighting": "ssim"}}},
    "msma": {"four_levels": {"levels": 4, "time_range": [0.0, 0.5]}},
    "scoped": {"forward_gaussian_two_probes": {"levels": 3, "time_range": [0.1, 0.7], "probes": 2, "probe": "gaussian", "jvp": "forward"}},
}
FLOAT64_RTOL = 1e-10
# Largest deviation measured from the AVX-512 recording: 1.2e-5 of a feature's spread with plain kernels
# (ATEN_CPU_CAPABILITY=default; diffpath_v2's SSIM-amplified cubic sums), 4.6e-6 with AVX2: an 80× margin.
FLOAT32_SPREAD_TOL = 1e-3
NETWORK_BATCH = 4


def _network_backbone():
    """A tiny Unet whose every parameter is drawn from a seeded generator (independent of torch's init code)."""
    backbone = random_backbone()
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in backbone.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return backbone


def _images(n: int = 5) -> torch.Tensor:
    from zsad.data import make_builtin

    arr = torch.from_numpy(make_builtin("shapes", "test", n)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return torch.nn.functional.interpolate(arr, size=16, mode="bilinear", align_corners=False)


def all_cases() -> list[tuple[str, str, dict]]:
    from zsad.scoring.scorers import SCORERS

    return [(name, "defaults", {}) for name in SCORERS] + [(name, case, opts) for name, cases in CASES.items() for case, opts in cases.items()]


def compute(name: str, options: dict) -> dict:
    """{"version", "options", "float64_analytic", "float32_network"} of one case."""
    import zsad
    from zsad.scoring.scorers import image_seeds

    scorer = zsad.build_scorer(name, network_batch=NETWORK_BATCH, **options)
    images = _images()
    seeds = image_seeds(0, images)
    with torch.inference_mode():
        f64, _ = scorer.features_and_maps(scorer.network(AnalyticBackbone()), images.to(torch.float64), seeds)
    f32 = scorer(_network_backbone(), images, seeds)
    return {"version": scorer.version, "options": scorer.options(), "float64_analytic": f64.tolist(), "float32_network": f32.tolist()}


def mismatches(name: str, case: str, ours: dict, golden: dict) -> list[str]:
    """What differs between a computed case and the recorded one (empty when it matches)."""
    version = str(ours["version"])
    ref = golden.get(name, {}).get(version, {}).get(case)
    if ref is None:
        return [f"{name} version {version} has no golden case '{case}': run `python tests/test_golden_features.py --record`."]
    problems = []
    if case == "defaults" and ours["options"] != ref["options"]:
        changed = {k: (ref["options"].get(k), v) for k, v in ours["options"].items() if ref["options"].get(k) != v}
        problems.append(f"{name}'s defaults changed (recorded → now: {changed}). A changed default is a row in a table with the old and "
                        f"the new side by side; when it is meant, re-record: python tests/test_golden_features.py --rerecord {name}")
    a, r = torch.tensor(ours["float64_analytic"], dtype=torch.float64), torch.tensor(ref["float64_analytic"], dtype=torch.float64)
    scale = r.abs().amax(dim=0).clamp(min=1e-300)
    dev64 = float(((a - r).abs() / scale).max())
    if dev64 > FLOAT64_RTOL:
        problems.append(f"{name}/{case}: float64 features differ from version {version}'s by {dev64:.3g} of their magnitude (tolerance "
                        f"{FLOAT64_RTOL:g}). If the change is intended, bump {name}'s `version` and record.")
    a, r = torch.tensor(ours["float32_network"], dtype=torch.float64), torch.tensor(ref["float32_network"], dtype=torch.float64)
    spread = (r.amax(dim=0) - r.amin(dim=0)).clamp(min=1e-12)
    dev32 = float(((a - r).abs() / spread).max())
    if dev32 > FLOAT32_SPREAD_TOL:
        problems.append(f"{name}/{case}: float32 network features differ by {dev32:.3g} of their spread over the batch (tolerance "
                        f"{FLOAT32_SPREAD_TOL:g}).")
    return problems


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def test_every_scorer_has_a_defaults_case(golden):
    from zsad.scoring.scorers import SCORERS, build_scorer

    missing = [n for n in SCORERS if "defaults" not in golden.get(n, {}).get(str(build_scorer(n).version), {})]
    assert not missing, f"record golden defaults for {missing}: python tests/test_golden_features.py --record"


@pytest.mark.parametrize("name,case,options", all_cases(), ids=[f"{n}-{c}" for n, c, _ in all_cases()])
def test_features_match_the_golden_features(golden, name, case, options):
    problems = mismatches(name, case, compute(name, options), golden)
    assert not problems, "\n".join(problems)


def test_a_changed_computation_or_default_is_caught(golden):
    """The check can fail: a default flipped, and features nudged by 1e-6 of their magnitude in float64."""
    ours = compute("diffpath_v2", {})
    assert mismatches("diffpath_v2", "defaults", ours, golden) == []
    flipped = compute("diffpath_v2", {"weighting": "none"})
    assert any("defaults changed" in p for p in mismatches("diffpath_v2", "defaults", flipped, golden))
    nudged = {**ours, "float64_analytic": (torch.tensor(ours["float64_analytic"]) * (1 + 1e-6)).tolist()}
    assert any("float64 features differ" in p for p in mismatches("diffpath_v2", "defaults", nudged, golden))


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_golden_features_hold_on_other_kernel_paths(capability):
    """The same check in a fresh process that forces torch's other CPU kernels (what a machine without
    AVX-512 runs): it must pass there too."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    proc = subprocess.run([sys.executable, __file__, "--check"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"ATEN_CPU_CAPABILITY={capability}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert f"kernels: {capability.upper()}" in proc.stdout, proc.stdout[-500:]


def _main(argv: list[str]) -> int:
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if argv[:1] == ["--check"]:
        problems = [p for name, case, opts in all_cases() for p in mismatches(name, case, compute(name, opts), golden)]
        print(f"kernels: {torch.backends.cpu.get_cpu_capability()}; {len(all_cases())} cases; {len(problems)} problem(s)")
        print("\n".join(problems))
        return 1 if problems else 0
    if argv[:1] in (["--record"], ["--rerecord"]):
        rerecord = argv[1:2]
        for name, case, opts in all_cases():
            ours = compute(name, opts)
            entry = golden.setdefault(name, {}).setdefault(str(ours["version"]), {})
            if case not in entry or name in rerecord:  # a recorded version is never overwritten unless asked
                entry[case] = ours
        GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
        print(f"recorded {GOLDEN}")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
