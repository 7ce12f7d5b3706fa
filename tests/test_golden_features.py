"""Golden features pin what every scorer version computes.

The feature cache keys entries by `Scorer.version`: a change to a scorer's `compute` that keeps the
version would serve features of the old code from every existing cache. So each (scorer, version) has
its features recorded here; a changed computation fails this test until the version is bumped and the
new features are recorded:

    .venv/bin/python tests/test_golden_features.py --record     # after bumping `version`
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "fixtures" / "golden_features.json"
OPTIONS = {
    "diffpath_v2": {"steps": 4, "weighting": "ssim"},  # the SSIM path covers more code than the default (none)
    "diffpath_6d": {"steps": 4},
    "diffpath_1d": {"steps": 4},
    "recon": {"levels": [0.1, 0.4], "steps": 3},
    "diffpath_fused": {"steps": 4, "v2": {"trajectory": "ddim_inversion", "weighting": "ssim"}},
    "msma": {"levels": 4},
}


def _backbone():
    """A tiny Unet whose every parameter is drawn from a seeded generator (independent of torch's init code)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from helpers import random_backbone

    backbone = random_backbone()
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in backbone.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return backbone


def _images() -> torch.Tensor:
    from zsad.data import make_builtin

    arr = torch.from_numpy(make_builtin("shapes", "test", 3)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return torch.nn.functional.interpolate(arr, size=16, mode="bilinear", align_corners=False)


def compute_all() -> dict:
    import zsad
    from zsad.ood.scorers import SCORERS

    backbone, images = _backbone(), _images()
    out = {}
    for name in SCORERS:
        scorer = zsad.build_scorer(name, network_batch=4, **OPTIONS[name])
        out[name] = {"version": scorer.version, "features": scorer(backbone, images, seed=0).tolist()}
    return out


@pytest.fixture(scope="module")
def computed() -> dict:
    return compute_all()


def test_every_scorer_has_golden_features(computed):
    golden = json.loads(GOLDEN.read_text())
    assert set(golden) >= set(computed), f"record golden features for {sorted(set(computed) - set(golden))}"


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_features_match_the_golden_features_of_their_version(computed, name):
    golden = json.loads(GOLDEN.read_text()).get(name, {})
    version = str(computed[name]["version"])
    assert version in golden, f"{name} version {version} has no golden features: run `python tests/test_golden_features.py --record`."
    ours, ref = torch.tensor(computed[name]["features"], dtype=torch.float64), torch.tensor(golden[version], dtype=torch.float64)
    # rtol 1e-5: CPU kernels of other machines may round differently; a changed computation moves far more.
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-8 * float(ref.abs().max())), (
        f"{name} computes other features than version {version} did (max diff {(ours - ref).abs().max():.3g}). "
        f"If the change is intended, bump {name}'s `version` and record: python tests/test_golden_features.py --record"
    )


if __name__ == "__main__" and "--record" in sys.argv:
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    for name, entry in compute_all().items():
        golden.setdefault(name, {}).setdefault(str(entry["version"]), entry["features"])  # never overwrite a recorded version
    GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"recorded {GOLDEN}")
