"""Per-image pixel histograms and paired bootstrap intervals (zsad/evaluation/pixel_bootstrap.py): every image once is the
streamed accumulator, a multiset is the accumulator of those images streamed that often, the paired Δ behaves (zero
for identical settings, positive when B's defect pixels score higher, narrower with more images, covers the true Δ),
and `zsad test` writes the files that experiments/paired_ad.py reads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from zsad.evaluation.ad_metrics import PixelMetricAccumulator, image_auroc, pixel_metrics_exact
from zsad.evaluation.pixel_bootstrap import (
    CategoryRun,
    ImagePixelHistograms,
    load_run,
    load_runs,
    paired_bootstrap,
    paired_bootstrap_categories,
    resampled_image_auroc,
    save_run,
    stratified_draws,
)

REPO = Path(__file__).resolve().parents[1]
PIXEL_KEYS = ("pixel_auroc", "pixel_aupr", "aupro")


def synthetic(n_images: int, size: int = 24, seed: int = 0, lift: float = 1.0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Maps with ties (rounded scores) and masks: every third image defect-free, the others with a blob, a corner-touching
    diagonal (one 8-connected region), and a stripe along the right edge that continues on the next image's left edge
    (a defect split across two images: two regions, one per image)."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(n_images):
        mask = np.zeros((size, size), dtype=np.uint8)
        if i % 3:
            r, c = rng.integers(2, size - 8, size=2)
            mask[r:r + rng.integers(2, 6), c:c + rng.integers(2, 6)] = 255
            for k in range(4):
                mask[size - 6 + k, 1 + k] = 1  # diagonal: 8-connected into one region
        if i % 3 == 1:
            mask[3:9, size - 2:] = 1  # right edge ...
        if i % 3 == 2:
            mask[3:9, :2] = 1  # ... continued on the next image's left edge
        score = np.round(rng.normal(size=(size, size)), 1)  # rounded: many ties, also between normal and defect pixels
        score[mask > 0] += lift * rng.uniform(0.2, 1.5)
        maps.append(score)
        masks.append(mask)
    return maps, masks


def stream(maps, masks, acc: PixelMetricAccumulator, repeats=None) -> ImagePixelHistograms:
    store = ImagePixelHistograms.like(acc)
    for i, (m, k) in enumerate(zip(maps, masks)):
        store.add(m, k)
        for _ in range(1 if repeats is None else int(repeats[i])):
            acc.update(m, k)
    return store


@pytest.mark.parametrize("binning", ["quantile", "equal"])
def test_every_image_once_is_the_streamed_accumulator(binning):
    maps, masks = synthetic(15)
    sample = np.concatenate([m.ravel() for m in maps[:4]])
    # Equal bins over a narrower range than the scores: clipping into the end bins must be reproduced too.
    acc = PixelMetricAccumulator.from_sample(sample, bins=300) if binning == "quantile" else PixelMetricAccumulator(-1.5, 2.0, bins=40)
    store = stream(maps, masks, acc)
    rebuilt = store.accumulator()
    assert np.array_equal(rebuilt.normal_hist, acc.normal_hist) and np.array_equal(rebuilt.defect_hist, acc.defect_hist)
    np.testing.assert_allclose(rebuilt.pro_mass, acc.pro_mass, rtol=1e-13, atol=1e-13)
    assert (rebuilt.n_regions, rebuilt.n_images, rebuilt.n_clipped) == (acc.n_regions, acc.n_images, acc.n_clipped)
    streamed, mine, bounds = acc.result(), store.result(), acc.error_bounds()
    exact = pixel_metrics_exact(maps, masks)
    for key in PIXEL_KEYS:
        assert mine[key] == pytest.approx(streamed[key], abs=1e-12), key
        assert abs(mine[key] - exact[key]) <= bounds[key] + 1e-12, key
    assert store.accumulator().error_bounds() == pytest.approx(bounds, abs=1e-12)
    # The batched path (sparse sums over the used bins only) gives the same numbers.
    batch = store.batch_metrics(np.ones((1, store.n_images)))
    for key in ("pixel_auroc", "aupro"):
        assert batch[key][0] == pytest.approx(streamed[key], abs=1e-12), key


def test_regions_follow_label_regions():
    """8-connected regions per image, a defect split across images counted once per image, a defect-free image none."""
    from zsad.evaluation.ad_metrics import label_regions

    maps, masks = synthetic(6)
    acc = PixelMetricAccumulator.from_sample(maps[0], bins=50)
    store = stream(maps, masks, acc)
    assert store.n_regions.tolist() == [label_regions(m)[1] for m in masks]
    assert store.n_regions[0] == 0 and store.n_regions[3] == 0


def test_a_multiset_is_the_accumulator_of_its_images_streamed_that_often():
    maps, masks = synthetic(12, seed=1)
    weights = np.random.default_rng(3).integers(0, 4, size=12)
    weights[2] = 0  # a defect image left out entirely
    acc = PixelMetricAccumulator.from_sample(np.concatenate([m.ravel() for m in maps]), bins=200)
    store = stream(maps, masks, acc, repeats=weights)
    rebuilt = store.accumulator(weights)
    assert np.array_equal(rebuilt.normal_hist, acc.normal_hist) and np.array_equal(rebuilt.defect_hist, acc.defect_hist)
    assert rebuilt.n_regions == acc.n_regions
    for key in PIXEL_KEYS:
        assert store.result(weights)[key] == pytest.approx(acc.result()[key], abs=1e-12), key
    rows = np.random.default_rng(4).integers(0, 3, size=(7, 12)).astype(float)
    batch = store.batch_metrics(rows)
    for j, w in enumerate(rows):
        one = store.result(w)
        for key in ("pixel_auroc", "aupro"):
            assert batch[key][j] == pytest.approx(one[key], abs=1e-12) if one[key] is not None else np.isnan(batch[key][j])


def test_file_round_trip_and_compact_storage(tmp_path):
    maps, masks = synthetic(9, size=64, seed=2)
    acc = PixelMetricAccumulator.from_sample(np.concatenate([m.ravel() for m in maps]), bins=20_000)
    store = stream(maps, masks, acc)
    run = CategoryRun(np.array([m.max() for m in maps]), np.array([int(k.any()) for k in masks]), [f"img{i}.png" for i in range(9)], store)
    save_run(tmp_path / "pixel_store" / "cat" / "m.npz", run)
    save_run(tmp_path / "pixel_store" / "cat" / "m_[score:_top_k].npz", CategoryRun(run.scores + 1, run.labels, run.names), pixels_from="m")
    back = load_run(tmp_path / "pixel_store" / "cat" / "m.npz")
    assert back.names == run.names and np.array_equal(back.scores, run.scores) and np.array_equal(back.labels, run.labels)
    assert back.pixels.result() == pytest.approx(store.result(), abs=1e-15)
    shared = load_runs(tmp_path, "m [score: top_k]")["cat"]
    assert shared.pixels.result() == pytest.approx(store.result(), abs=1e-15)
    with pytest.raises(ValueError, match="complete"):
        back.pixels.add(maps[0], masks[0])
    # Only non-empty bins are kept: at most one entry per pixel and per bin, for the normal and the region histograms.
    p = store._pack()
    per_image = np.diff(p["normal_ptr"])
    assert (per_image <= min(64 * 64, acc.bins)).all()
    assert store.nbytes < 9 * 64 * 64 * 8  # less than the float64 maps themselves


def test_a_bin_of_more_than_65535_pixels_is_counted_whole(tmp_path):
    """Counts are uint16 where they fit; a flat 260×260 map (67,600 ties in one bin) needs uint32, also through a file."""
    flat, mask = np.zeros((260, 260)), np.zeros((260, 260), dtype=np.uint8)
    mask[10:20, 10:20] = 1
    maps, masks = [flat, flat + np.where(mask > 0, 1.0, 0.0)], [np.zeros_like(mask), mask]
    acc = PixelMetricAccumulator.from_sample(np.array([0.0, 1.0]), bins=10)
    store = stream(maps, masks, acc)
    assert store._pack()["normal_count"].dtype == np.uint32
    save_run(tmp_path / "s.npz", CategoryRun(np.zeros(2), np.array([0, 1]), None, store))
    back = load_run(tmp_path / "s.npz").pixels.accumulator()
    assert np.array_equal(back.normal_hist, acc.normal_hist) and back.result() == acc.result()


def pair_of_runs(n_images: int, seed: int, lift: float = 0.0) -> tuple[CategoryRun, CategoryRun]:
    """A: synthetic maps; B: the same maps with positive noise (mean `lift`) on the defect pixels only."""
    maps, masks = synthetic(n_images, seed=seed)
    rng = np.random.default_rng(seed + 100)
    maps_b = [m + np.where(k > 0, lift * rng.exponential(size=m.shape), 0.0) for m, k in zip(maps, masks)]
    labels = np.array([int(k.any()) for k in masks])
    runs = []
    for ms in (maps, maps_b):
        acc = PixelMetricAccumulator.from_sample(np.concatenate([m.ravel() for m in ms[:5]]), bins=500)
        store = stream(ms, masks, acc)
        runs.append(CategoryRun(np.array([np.sort(m.ravel())[-5:].mean() for m in ms]), labels, None, store))
    return runs[0], runs[1]


def test_identical_settings_give_zero_delta_and_a_zero_width_interval():
    a, _ = pair_of_runs(15, seed=5)
    b = CategoryRun(a.scores.copy(), a.labels.copy(), None, load_like(a.pixels))
    for d in paired_bootstrap(a, b, n_resamples=200, seed=1).values():
        assert d.delta == 0.0 and d.low == 0.0 and d.high == 0.0 and d.n_resamples == 200, d


def load_like(store: ImagePixelHistograms) -> ImagePixelHistograms:
    """An independent copy, through the file format."""
    return ImagePixelHistograms.from_arrays(store.arrays())


def test_higher_defect_scores_give_a_positive_aupro_delta_that_excludes_zero():
    a, b = pair_of_runs(30, seed=6, lift=0.8)
    deltas = paired_bootstrap(a, b, n_resamples=300, seed=2)
    assert deltas["aupro"].delta > 0 and deltas["aupro"].low > 0, deltas["aupro"]
    assert deltas["pixel_auroc"].delta > 0 and deltas["pixel_auroc"].low > 0, deltas["pixel_auroc"]
    assert deltas["aupro"].low <= deltas["aupro"].delta <= deltas["aupro"].high
    # Swapped roles: the same draws (same seed) give exactly the mirrored interval.
    back = paired_bootstrap(b, a, n_resamples=300, seed=2)["aupro"]
    assert back.delta == pytest.approx(-deltas["aupro"].delta) and back.low == pytest.approx(-deltas["aupro"].high)


def test_the_interval_narrows_with_more_images():
    widths = []
    for n in (15, 60):
        a, b = pair_of_runs(n, seed=7, lift=0.3)
        d = paired_bootstrap(a, b, n_resamples=300, seed=3)["aupro"]
        widths.append(d.high - d.low)
    assert widths[1] < 0.75 * widths[0], widths  # about 1/2 expected (√4)


def test_stratified_draws_keep_each_class_and_its_count():
    labels = np.array([0, 1, 1, 0, 1, 0, 0])
    draws = stratified_draws(labels, 50, np.random.default_rng(0))
    assert draws.shape == (50, 7)
    assert ((labels[draws] == 0).sum(axis=1) == 4).all() and ((labels[draws] == 1).sum(axis=1) == 3).all()


def test_resampled_image_auroc_is_image_auroc_of_each_resample():
    rng = np.random.default_rng(12)
    scores, labels = np.round(rng.normal(size=30), 1), np.r_[np.zeros(18, int), np.ones(12, int)]  # rounded: ties
    draws = stratified_draws(labels, 40, rng)
    fast = resampled_image_auroc(scores, labels, draws)
    assert fast == pytest.approx([image_auroc(scores[d], labels[d]) for d in draws], abs=1e-12)
    assert np.isnan(resampled_image_auroc(scores, np.zeros(30, int), draws[:2])).all()


def test_categories_are_redrawn_independently_for_the_mean():
    """Two copies of one category: drawn independently, the mean's interval is about 1/√2 of one category's; drawn
    with the same indices it would be as wide."""
    a, b = pair_of_runs(24, seed=8, lift=0.4)
    per_category, mean = paired_bootstrap_categories({"x": (a, b), "y": (a, b)}, n_resamples=400, seed=4)
    for m in ("image_auroc", "pixel_auroc", "aupro"):
        assert mean[m].delta == pytest.approx(per_category["x"][m].delta)
    one = per_category["x"]["aupro"]
    assert mean["aupro"].high - mean["aupro"].low < 0.85 * (one.high - one.low)


def test_image_auroc_interval_covers_the_true_delta():
    """Coverage of the 95% interval of Δ image AUROC on a synthetic pair with a known Δ (population of 200k)."""
    rng = np.random.default_rng(11)

    def draw(n0, n1):
        latent = np.concatenate([rng.normal(size=n0), rng.normal(1.0, 1.0, size=n1)])
        labels = np.r_[np.zeros(n0, int), np.ones(n1, int)]
        score_a = latent + rng.normal(0, 1.0, size=n0 + n1)
        score_b = latent + rng.normal(0, 0.6, size=n0 + n1)  # B: less noise, a higher AUROC
        return score_a, score_b, labels

    pa, pb, pl = draw(100_000, 100_000)
    true = image_auroc(pb, pl) - image_auroc(pa, pl)
    covered, trials = 0, 200
    for t in range(trials):
        sa, sb, labels = draw(25, 25)
        d = paired_bootstrap(CategoryRun(sa, labels), CategoryRun(sb, labels), n_resamples=300, seed=t)["image_auroc"]
        covered += d.low <= true <= d.high
        assert d.n_resamples == 300
    assert covered / trials >= 0.85, (covered, trials, true)


def test_runs_on_different_images_are_refused():
    a, b = pair_of_runs(9, seed=9)
    with pytest.raises(ValueError, match="different"):
        paired_bootstrap(a, CategoryRun(b.scores[:-1], b.labels[:-1]))
    with pytest.raises(ValueError, match="different test images"):
        paired_bootstrap(CategoryRun(a.scores, a.labels, list("abcdefghi")), CategoryRun(a.scores, a.labels, list("abcdefghj")))


def test_zsad_test_writes_the_stores_and_paired_ad_reads_them(tmp_path):
    """`zsad test`'s category evaluation with pixel_store on (a stand-in backbone: the numbers do not matter, the wiring
    does; 9 overlapping tiles, so the blend variants have maps of their own): one file per method; a store's metrics
    are the row's; the [score: top_k] row shares the default's maps."""
    import torch

    from zsad.diffusion.backbone import Backbone
    from zsad.diffusion.schedule import cosine_alphas_cumprod

    class SmoothingBackbone(Backbone):
        """ε̂ = x_t minus its 3×3 local mean: cheap (the test is about the files, not the network), yet image-dependent."""

        def __init__(self):
            super().__init__(cosine_alphas_cumprod(1000), 16, "smoothing")

        def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return x_t - torch.nn.functional.avg_pool2d(x_t, 3, stride=1, padding=1, count_include_pad=False)

    from zsad.data.defects import make_defect_benchmark
    from zsad.data.layouts import read_mvtec
    from zsad.evaluation.industrial import IndustrialSettings, evaluate_category

    make_defect_benchmark(tmp_path / "data", categories=["grass"], size=32, n_train=12, n_test_good=4, n_test_defect_per_family=1, seed=0)
    (labelled,) = read_mvtec(tmp_path / "data", "grass")
    settings = IndustrialSettings(working_size=32, tile_stride=8, device="cpu", cache_dir=None, batch_size=16, examples=0, pixel_store=True)
    out = tmp_path / "out"
    rows, _ = evaluate_category(labelled, SmoothingBackbone(), None, settings, out)
    assert any("[blend: " in r["method"] for r in rows) and any("[score: " in r["method"] for r in rows)
    files = sorted(p.stem for p in (out / "pixel_store" / "grass").glob("*.npz"))
    assert files == sorted(r["method"].replace(" ", "_") for r in rows)
    for r in rows:
        run = load_runs(out, r["method"])["grass"]
        assert run.names == [i.name for i in labelled.test]
        assert run.scores.tolist() == pytest.approx([float(s) for s in _csv_scores(out, r["method"])], abs=0)
        for key in ("pixel_auroc", "aupro"):
            assert run.pixels.result()[key] == pytest.approx(r[key], abs=1e-12), (r["method"], key)
    (out / "results.json").write_text(json.dumps({"rows": [{"method": rows[0]["method"]}]}))
    spec = importlib.util.spec_from_file_location("paired_ad", REPO / "experiments" / "paired_ad.py")
    paired_ad = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paired_ad)
    table = paired_ad.paired_table(out, out, method_b="pixel_gaussian", resamples=50)
    assert "| grass | 8 (4) |" in table and "| **mean** (n = 1) |" in table
    same = paired_ad.paired_table(out, out, resamples=50)
    assert same.count("+0.000 [+0.000, +0.000]") == 6  # three metrics, per category and mean: Δ = 0 exactly


def _csv_scores(out: Path, method: str) -> list[str]:
    import csv

    with open(out / "scores" / "grass" / f"{method.replace(' ', '_')}.csv") as f:
        return [row["anomaly_score"] for row in csv.DictReader(f)]
