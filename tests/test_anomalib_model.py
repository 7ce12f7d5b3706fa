"""zsad's detector as an anomalib model (zsad/integrations/anomalib/model.py, docs/anomalib.md "A zsad model in anomalib's Engine").

anomalib's own Engine and Folder datamodule, offline, on a 16 px MVTec-layout folder of coins (zsad/data/defects.py) with the
20-step smoke backbone (16 px: one tile per image, so nothing is resized by zsad or anomalib and every image round-trips as
uint8). The reference is zsad's own `AnomalyDetector` (the object behind `zsad fit`, `zsad score` and `zsad test`) fitted on the
same training folder with the same settings: compared through the API directly.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import write_visa_layout

from zsad.errors import ConfigError, ZsadError

pytest.importorskip("anomalib")

REPO = Path(__file__).resolve().parents[1]
ALPHA = 0.2
FAMILIES = ("scratch", "hole", "stain", "patch")
N_TRAIN = 24  # 5 to calibrate (max(⌈0.2·24⌉, ⌈1/α⌉ − 1)), 19 to fit
CHEAP = {"scorer": "diffpath_v2", "scorer_options": {"steps": 2}, "batch_size": 20, "network_batch": 20}


def _datamodule(root: Path, **kwargs):
    from anomalib.data import Folder

    return Folder(name="coins", root=root / "coins", normal_dir="train/good", normal_test_dir="test/good",
                  abnormal_dir=[f"test/{f}" for f in FAMILIES], mask_dir=[f"ground_truth/{f}" for f in FAMILIES],
                  val_split_mode="from_test", val_split_ratio=0.5, seed=0, num_workers=0, train_batch_size=16, eval_batch_size=16, **kwargs)


def _model(backbone: str, cache: Path, **kwargs):
    from zsad.integrations.anomalib import Zsad

    return Zsad(backbone=backbone, false_alarm_rate=ALPHA, device="cpu", cache_dir=str(cache), **CHEAP, visualizer=False, **kwargs)


def _engine(root: Path):
    from anomalib.engine import Engine

    return Engine(default_root_dir=root / "runs", logger=False, accelerator="cpu", devices=1, enable_progress_bar=False)


def _outputs(batches) -> dict[str, np.ndarray]:
    cat = lambda name: np.concatenate([getattr(b, name).detach().cpu().numpy().reshape(len(b.image_path), -1) for b in batches])
    return {"path": np.concatenate([b.image_path for b in batches]), "score": cat("pred_score")[:, 0], "label": cat("pred_label")[:, 0],
            "p": cat("p_value")[:, 0], "raw": cat("zsad_score")[:, 0], "map": cat("anomaly_map"), "mask": cat("pred_mask"),
            "gt": cat("gt_label")[:, 0], "gt_mask": cat("gt_mask").astype(bool)}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, smoke_checkpoint):
    """Zsad fitted through Engine.fit on 24 normal 16 px coins (19 to fit, 5 to calibrate at α = 0.2), then predicted on the
    held-out test images (10 normal, 4 anomalous; the other half went to validation)."""
    from lightning.pytorch import seed_everything

    from zsad.data.defects import make_defect_benchmark

    root = tmp_path_factory.mktemp("zsad_anomalib")
    make_defect_benchmark(root, ["coins"], size=16, n_train=N_TRAIN, n_test_good=20, n_test_defect_per_family=2)
    seed_everything(0)
    model, engine, dm = _model(str(smoke_checkpoint), root / "cache"), _engine(root), _datamodule(root)
    engine.fit(model, datamodule=dm)
    pred = _outputs(engine.predict(model, dataloaders=dm.test_dataloader()))
    # the reference: zsad's own detector on the same training folder with the same settings, scored on the same test files
    from zsad import AnomalyDetector

    det = AnomalyDetector.fit(root / "coins" / "train" / "good", backbone=str(smoke_checkpoint), false_alarm_rate=ALPHA, device="cpu",
                              cache_dir=root / "cache_api", **CHEAP)
    return {"root": root, "model": model, "engine": engine, "dm": dm, "backbone": str(smoke_checkpoint), "pred": pred, "det": det,
            "ref": det.score(list(pred["path"])), "ckpt": Path(engine.trainer.checkpoint_callback.best_model_path)}


def test_image_scores_equal_zsads_own_detector(fitted):
    """No resize anywhere and 8-bit PNGs: the image scores are those of AnomalyDetector.fit on the same training folder (same
    hashed split, same settings) scored on the same test files, to 1e-6; p-values and decisions are identical."""
    pred, det, ref = fitted["pred"], fitted["det"], fitted["ref"]
    ours = fitted["model"].detector
    assert ours.info["fit_names"] == det.info["fit_names"] and ours.info["calibration_names"] == det.info["calibration_names"]
    assert np.abs(ours.calibration.scores - det.calibration.scores).max() <= 1e-6
    error = float(np.abs(ref.scores - pred["raw"]).max())
    print(f"\nZsad in anomalib vs AnomalyDetector on {len(ref.scores)} test images: max |score difference| = {error:.3g}")
    assert error <= 1e-6
    assert np.array_equal(ref.is_anomaly, pred["label"].astype(bool)) and np.allclose(ref.p_values, pred["p"], rtol=0, atol=1e-12)
    masks = np.stack([m.ravel() for m in ref.maps]) > det.maps.threshold
    assert np.array_equal(masks, pred["mask"]), "pred_mask is zsad's outline at the input's size"


def test_outputs_are_what_anomalib_expects(fitted):
    """pred_score in (0, 1), the order of zsad's scores kept, threshold at ½ (outputs.normalise); pred_label = p ≤ α; maps at
    the input image's size (16 × 16) in (0, 1) with the outline threshold at ½."""
    from zsad.integrations.anomalib.outputs import image_scale, normalise

    pred, det = fitted["pred"], fitted["model"].detector
    assert ((pred["score"] > 0) & (pred["score"] < 1)).all() and ((pred["map"] > 0) & (pred["map"] < 1)).all()
    expected = normalise(pred["raw"], image_scale(det.calibration, ALPHA)).astype(np.float32)
    assert np.array_equal(pred["score"], expected)
    order = np.argsort(pred["raw"], kind="stable")
    assert (np.diff(pred["score"][order]) >= 0).all()
    assert np.array_equal(pred["label"].astype(bool), pred["p"] <= ALPHA) and np.array_equal(pred["label"].astype(bool), pred["score"] > 0.5)
    assert pred["map"].shape == (len(pred["path"]), 16 * 16)
    assert np.array_equal(pred["mask"], pred["map"] > 0.5)


def test_anomalibs_metrics_run_on_zsads_outputs(fitted):
    """Engine.test: the default evaluator reads pred_score, pred_label, anomaly_map and pred_mask against the ground truth;
    the post-processor passes zsad's decisions through (anomalib's own would re-threshold them)."""
    from zsad.integrations.anomalib import ZsadPostProcessor

    model = fitted["model"]
    assert isinstance(model.post_processor, ZsadPostProcessor) and model.pre_processor.transform is None
    (metrics,) = fitted["engine"].test(model, datamodule=fitted["dm"])
    assert {"image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_F1Score"} <= set(metrics)
    pred = fitted["pred"]
    f1 = 2 * (pred["label"] * pred["gt"]).sum() / max(pred["label"].sum() + pred["gt"].sum(), 1)
    assert metrics["image_F1Score"] == pytest.approx(f1, abs=1e-6), "F1 of zsad's own decisions, not of a threshold anomalib chose"


def test_anomalibs_evaluator_gives_zsads_metric_values(fitted):
    """anomalib's Evaluator with image AUROC, pixel AUROC and AUPRO (its default set has no AUPRO), on Zsad's outputs (maps
    and masks at the input's 16 × 16), against zsad's own metrics (zsad.evaluation.ad_metrics) on AnomalyDetector's raw
    scores and maps: within 1e-3. The outputs lie in (0, 1), so torchmetrics applies no sigmoid, and their map keeps order."""
    from anomalib.metrics import AUPRO, AUROC, Evaluator

    from zsad.evaluation.ad_metrics import image_auroc, pixel_metrics_exact

    evaluator = Evaluator(test_metrics=[AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
                                        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
                                        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False)])
    model = fitted["model"]
    default, model.evaluator = model.evaluator, evaluator
    try:
        (theirs,) = _engine(fitted["root"]).test(model, datamodule=fitted["dm"])
    finally:
        model.evaluator = default
    pred, ref = fitted["pred"], fitted["ref"]
    masks = [m.reshape(16, 16) for m in pred["gt_mask"]]
    exact = pixel_metrics_exact(ref.maps, masks)
    ours = {"image_AUROC": image_auroc(ref.scores, pred["gt"]), "pixel_AUROC": exact["pixel_auroc"], "pixel_AUPRO": exact["aupro"]}
    print(f"\nanomalib's Evaluator {theirs}; zsad's {ours}")
    assert 0 < ours["pixel_AUPRO"] < 1 and 0 < ours["pixel_AUROC"] < 1
    for key, value in ours.items():
        assert abs(theirs[key] - value) <= 1e-3, (key, theirs[key], value)


def test_the_contract_one_epoch_no_gradient_one_class(fitted):
    from anomalib import LearningType

    model = fitted["model"]
    assert model.trainer_arguments["max_epochs"] == 1 and model.trainer_arguments["num_sanity_val_steps"] == 0
    assert model.configure_optimizers() is None and model.learning_type == LearningType.ONE_CLASS
    assert not list(model.parameters()), "nothing to train"
    assert fitted["engine"].trainer.current_epoch == 1 and bool(model._is_fitted)


def test_the_checkpoint_is_plain_data_and_predicts_the_same_in_a_new_process(fitted, tmp_path):
    """torch.load(weights_only=True) reads the checkpoint (no pickled code); Engine().predict(ckpt_path=...) in a fresh process,
    with a model built at the defaults, gives the same raw scores, p-values, decisions and maps."""
    import torch

    checkpoint = torch.load(fitted["ckpt"], weights_only=True, map_location="cpu")
    state = checkpoint["zsad_detector"]
    assert set(state["texts"]) == {"card.md", "detector.json", "recipe.json", "settings.json"} and "calibration.npz" in state["arrays"]
    assert np.array_equal(state["arrays"]["calibration.npz"]["scores"].numpy(), fitted["model"].detector.calibration.scores)
    out = tmp_path / "out.npz"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        from pathlib import Path
        import numpy as np
        from test_anomalib_model import _datamodule, _engine, _outputs
        from zsad.integrations.anomalib import Zsad
        root = Path({str(fitted["root"])!r})
        model = Zsad(visualizer=False)
        res = _outputs(_engine(root).predict(model, datamodule=_datamodule(root), ckpt_path={str(fitted["ckpt"])!r}))
        np.savez({str(out)!r}, alpha=model.detector.false_alarm_rate, **res)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    again, pred = np.load(out), fitted["pred"]
    assert float(again["alpha"]) == ALPHA
    for key in ("path", "label", "p", "raw", "score", "map", "mask"):
        assert np.array_equal(again[key], pred[key]), key


def test_mistakes_are_clear_errors(fitted, tmp_path):
    """An unfitted model, a backbone object, an unknown scorer, an impossible rate, ImageNet-normalised images."""
    import torch
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Normalize

    from zsad.integrations.anomalib import Zsad

    with pytest.raises(ConfigError, match="not fitted: run Engine\\(\\)\\.fit"):
        Zsad().model(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ConfigError, match="backbone must be a checkpoint path"):
        Zsad(backbone=object())
    with pytest.raises(ConfigError, match="between 0 and 1"):
        Zsad(false_alarm_rate=5)
    with pytest.raises(ZsadError, match="Unknown scorer 'no_such_scorer'"):
        Zsad(scorer="no_such_scorer")
    root = fitted["root"]
    imagenet = PreProcessor(transform=Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]))
    with pytest.raises(ConfigError, match="outside \\[0, 1\\].*Normalize"):
        _engine(tmp_path).fit(_model(fitted["backbone"], root / "cache", pre_processor=imagenet), datamodule=_datamodule(root))


def _visa_layout(root: Path, coins: Path) -> None:
    """VisA's own layout for one of its 12 categories, "candle", from the 16 px coins (tests/helpers.py writes it)."""
    from PIL import Image

    train = [(f"train_{p.stem}", Image.open(p)) for p in sorted((coins / "train" / "good").glob("*.png"))[:N_TRAIN]]
    good = [(f"test_{p.stem}", Image.open(p)) for p in sorted((coins / "test" / "good").glob("*.png"))[:6]]
    bad = [(f"{family}_{p.stem}", Image.open(p), Image.open(coins / "ground_truth" / family / f"{p.stem}_mask.png"))
           for family in FAMILIES for p in sorted((coins / "test" / family).glob("*.png"))]
    write_visa_layout(root, "candle", train, good, bad)


def test_visa_through_anomalibs_datamodule_and_its_split_csv(fitted, tmp_path, monkeypatch):
    """anomalib's Visa datamodule on VisA's own layout in a writable temporary folder: it applies the split CSV into
    visa_pytorch/ there (a download attempt fails the test), Zsad fits and predicts through it, and the scores are those of
    zsad's own detector fitted on the folder anomalib wrote (JPEG decoded by PIL on both roads), to 1e-6."""
    import anomalib.data.datamodules.image.visa as visa_module
    from anomalib.data import Visa

    from zsad import AnomalyDetector
    from zsad.data.layouts import load_mask, read_mvtec, read_visa

    def no_download(*args, **kwargs):
        raise AssertionError("anomalib tried to download VisA: the fixture's layout was not recognised")

    monkeypatch.setattr(visa_module, "download_and_extract", no_download)
    root = tmp_path / "visa"
    _visa_layout(root, fitted["root"] / "coins")
    dm = Visa(root=root, category="candle", num_workers=0, train_batch_size=16, eval_batch_size=16, seed=0)
    model, engine = _model(fitted["backbone"], tmp_path / "cache"), _engine(tmp_path)
    engine.fit(model, datamodule=dm)
    split = root / "visa_pytorch" / "candle"
    assert len(list((split / "train" / "good").iterdir())) == N_TRAIN and len(list((split / "ground_truth" / "bad").iterdir())) == 8
    pred = _outputs(engine.predict(model, dataloaders=dm.test_dataloader()))
    assert len(pred["path"]) == 14 and pred["gt"].sum() == 8 and pred["gt_mask"].any()
    # `zsad test --data mvtec:<root>/visa_pytorch` reads the folder anomalib wrote: the same training and test images, masks matched
    (labelled,) = read_mvtec(root / "visa_pytorch", "candle")
    resolved = lambda paths: sorted(str(Path(p).resolve()) for p in paths)
    assert resolved(labelled.train) == resolved(dm.train_data.samples.image_path) and resolved(i.path for i in labelled.test) == resolved(pred["path"])
    assert labelled.has_masks and sum(i.mask is not None for i in labelled.test) == 8
    # `zsad test --data visa:<root>` reads VisA's own layout and split CSV in place: the same images, labels and masks
    (raw,) = read_visa(root, "candle")
    content = lambda paths: sorted(Path(p).read_bytes() for p in paths)
    assert content(raw.train) == content(labelled.train) and raw.has_masks
    assert sorted((Path(i.path).name, i.label, i.defect) for i in raw.test) == sorted((Path(i.path).name, i.label, i.defect) for i in labelled.test)
    masks = lambda items: sorted((Path(i.path).stem, load_mask(i).tobytes()) for i in items if i.label)
    assert masks(raw.test) == masks(labelled.test)
    det = AnomalyDetector.fit(split / "train" / "good", backbone=fitted["backbone"], false_alarm_rate=ALPHA, device="cpu",
                              cache_dir=tmp_path / "cache_api", **CHEAP)
    ref = det.score(list(pred["path"]), with_maps=False)
    error = float(np.abs(ref.scores - pred["raw"]).max())
    print(f"\nVisA (candle) through anomalib's Visa: max |score difference| from AnomalyDetector = {error:.3g}")
    assert error <= 1e-6 and np.array_equal(ref.is_anomaly, pred["label"].astype(bool))
