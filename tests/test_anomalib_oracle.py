"""anomalib's metric classes as a second oracle for zsad's pixel AUROC and AUPRO (zsad/evaluation/ad_metrics.py).

What anomalib 2.7 does, read from its sources (anomalib/metrics/{auroc,aupro}.py, utils/cv/connected_components.py):
* `AUPRO`: regions from OpenCV's connectedComponents (8-connected by default) per image, labels unique across
  the batch; FPR over all mask-0 pixels of the batch; PRO = mean over regions of the fraction above the
  threshold; one curve point per distinct score; cut at fpr_limit = 0.3 by linear interpolation; area / 0.3.
  The same definition as zsad's. It differs in precision only: an `ImageBatch` stores anomaly maps as float32,
  and the cumulative sums and the area are float32 (relative rounding 6e-8 per step, summed pairwise). It
  returns 0 where zsad returns None (no defect region).
* `AUROC`: torchmetrics' BinaryROC, which applies a sigmoid to any input outside [0, 1]: heavy-tailed scores
  saturate at 1.0 and tie. It is fed the dense ranks of the pooled pixel scores scaled into [0, 1], an order-
  preserving map that keeps ties (exact in float32 for fewer than 2^24 distinct values).

Tolerance: exact zsad vs anomalib 2e-6, float32 rounding with a margin (observed < 2e-7 on these maps). Binned
zsad vs anomalib: its own `error_bounds()` + 2e-6. The maps are float32 before they reach either, so both see
the same scores. Small data (24 maps of 32×32): anomalib keeps every pixel and sorts them.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import rankdata

pytest.importorskip("anomalib")
torch = pytest.importorskip("torch")
from anomalib.data import ImageBatch  # noqa: E402
from anomalib.metrics import AUPRO, AUROC  # noqa: E402

from zsad.evaluation.ad_metrics import PixelMetricAccumulator, pixel_metrics_exact  # noqa: E402

TOLERANCE = 2e-6


def maps_and_masks(seed: int, kind: str, n: int = 24, size: int = 32, normal_only: bool = False):
    """float32 maps: "lognormal" (σ = 3), "ties" (floor of it), "tiny" (1-pixel defects and diagonal pairs,
    which are one region only when 8-connected), "negative" (1000·sinh(3z)); defects in 2 images of 3."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(n):
        z = ndimage.gaussian_filter(rng.normal(size=(size, size)), 1.0)
        z /= z.std()
        mask = np.zeros((size, size), bool)
        if not normal_only and i % 3:
            if kind == "tiny":
                r, c = rng.integers(1, size - 1, size=2)
                mask[r, c] = True
                if i % 2:
                    mask[r + 1, c + 1] = True  # touches at a corner: one region
            else:
                field = ndimage.gaussian_filter(rng.normal(size=(size, size)), rng.uniform(1, 4))
                mask = field > np.quantile(field, 1 - rng.uniform(0.005, 0.1))
        x = 3.0 * (z + rng.uniform(0.5, 2.3) * mask)
        score = {"lognormal": np.exp(x), "tiny": np.exp(x), "ties": np.floor(np.exp(x)), "negative": 1000 * np.sinh(x)}[kind]
        maps.append(score.astype(np.float32))
        masks.append(mask)
    return maps, masks


def anomalib_metrics(maps, masks) -> dict[str, float]:
    """anomalib's AUROC (on ranks) and AUPRO (on the maps), fed one ImageBatch as in an anomalib Evaluator."""
    stacked, truth = np.stack(maps), torch.from_numpy(np.stack(masks))
    ranks = rankdata(stacked, method="dense").reshape(stacked.shape) - 1.0
    ranks /= max(ranks.max(), 1.0)
    out = {}
    for name, metric, values in [("pixel_auroc", AUROC, ranks), ("aupro", AUPRO, stacked)]:
        m = metric(fields=["anomaly_map", "gt_mask"])
        m.update(ImageBatch(image=torch.zeros(len(maps), 3, *stacked.shape[1:]), anomaly_map=torch.from_numpy(values), gt_mask=truth))
        out[name] = float(m.compute())
    return out


@pytest.mark.parametrize("kind", ["lognormal", "ties", "tiny", "negative"])
def test_exact_and_binned_agree_with_anomalib(kind):
    maps, masks = maps_and_masks(0, kind)
    theirs = anomalib_metrics(maps, masks)
    exact = pixel_metrics_exact(maps, masks)
    # Edges from a separate draw of normal maps (calibration), not from these maps.
    acc = PixelMetricAccumulator.from_sample(np.concatenate([m.ravel() for m in maps_and_masks(1, kind, normal_only=True)[0]]))
    for m, g in zip(maps, masks):
        acc.update(m, g)
    binned, bound = acc.result(), acc.error_bounds()
    print(f"{kind}: anomalib={theirs} exact={exact} binned={binned} bound={bound}")
    assert all(0.05 < theirs[k] < 0.99 for k in theirs), theirs  # not degenerate
    for k in theirs:
        assert abs(exact[k] - theirs[k]) < TOLERANCE, (k, exact[k], theirs[k])
        assert abs(binned[k] - theirs[k]) <= bound[k] + TOLERANCE and bound[k] < 1e-3, (k, binned[k], theirs[k], bound[k])


def test_anomalib_auroc_sigmoids_raw_heavy_tailed_scores():
    # Why the ranks above: fed raw scores, torchmetrics squashes them (sigmoid), and every score above ~17 ties
    # at 1.0 in float32. zsad's AUROC needs no such care: it is exact at any scale.
    maps, masks = maps_and_masks(0, "lognormal")
    m = AUROC(fields=["anomaly_map", "gt_mask"])
    m.update(ImageBatch(image=torch.zeros(len(maps), 3, 32, 32), anomaly_map=torch.from_numpy(np.stack(maps)), gt_mask=torch.from_numpy(np.stack(masks))))
    assert abs(float(m.compute()) - pixel_metrics_exact(maps, masks)["pixel_auroc"]) > 1e-3


def test_zsad_never_imports_anomalib():
    # Only meaningful where anomalib is installed (here): the CLI and the metrics path load without it.
    code = "import sys, zsad.cli, zsad.evaluation.industrial; assert 'anomalib' not in sys.modules, 'zsad imported anomalib'"
    subprocess.run([sys.executable, "-c", code], check=True)
