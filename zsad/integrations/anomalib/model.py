"""`Zsad`: zsad's zero-shot diffusion detector as an anomalib model (docs/anomalib.md, "A zsad model in anomalib's Engine").

    from zsad.integrations.anomalib import Zsad
    model = Zsad(backbone="zsad-demo", false_alarm_rate=0.05)
    Engine().fit(model, datamodule=Folder(...)); Engine().test(model, datamodule=...)

* Fitting, as PatchCore's memory bank: `training_step` keeps the training images (8-bit, as anomalib loaded them), and at
  the end of the one training epoch `AnomalyDetector.fit` runs on them: the hashed fit/calibration split of zsad's own
  `zsad fit` (names = the image paths relative to their common folder, as `zsad fit <folder>` names them), the density
  model on the fit part, the conformal calibration on the rest. No gradient, no optimiser.
* Pre-processing: zsad's own (bit-depth rule, bilinear resize to the working shape, [-1, 1]), run inside the detector;
  anomalib's pre-processor does nothing unless `configure_pre_processor(image_size=...)` asks it to resize first.
* Outputs: `pred_score` = outputs.normalise of zsad's image score (order kept, threshold at 0.5), `anomaly_map` at the
  input image's size (normalised the same way on zsad's overlay colour scale), `pred_label` = zsad's conformal decision
  p ≤ α, `pred_mask` = map above zsad's outline threshold; `p_value` and the raw `zsad_score` ride along on every batch.
  The model's post-processor (`ZsadPostProcessor`) passes these through: anomalib's default one would re-threshold them
  with its F1-adaptive threshold and rescale them by min-max.
* Checkpoint: the detector folder that `AnomalyDetector.save` writes (JSON texts and npz arrays as tensors) under the
  checkpoint key "zsad_detector": plain data that `torch.load(weights_only=True)` reads, no pickled code.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from zsad.detection.inputs import Images, PILSource
from zsad.detection.maps import upsample
from zsad.detection.model import AnomalyDetector
from zsad.detection.settings import DetectorSettings
from zsad.errors import ConfigError
from zsad.integrations.anomalib.outputs import _scale, image_scale, map_scale, normalise
from zsad.integrations.anomalib.version import require_anomalib

require_anomalib()  # before anomalib's own imports: an untested version fails here, with the range and the install command

from anomalib import LearningType  # noqa: E402
from anomalib.data import Batch, InferenceBatch  # noqa: E402
from anomalib.models.components.base import AnomalibModule, MemoryBankMixin  # noqa: E402
from anomalib.post_processing import PostProcessor  # noqa: E402
from anomalib.pre_processing import PreProcessor  # noqa: E402
from torchvision.transforms.v2 import Resize  # noqa: E402

# The DetectorSettings fields this model takes as arguments, with the backbone; their defaults live in DetectorSettings
# only (FIT_DEFAULTS). Left out: `skip_corrupt` (anomalib has decoded every image already) and `bit_depth` (anomalib hands
# over 8-bit RGB, so the rule is always 8 bits).
FIT_OPTIONS = ("backbone", "scorer", "scorer_options", "detector_kind", "false_alarm_rate", "shots", "working_size", "tile_stride", "device", "cache_dir",
               "batch_size", "network_batch", "seed", "map_combination", "aggregation", "top_k", "tile_position", "precision",
               "require_rate", "blend", "preset")
FIT_DEFAULTS = {"backbone": inspect.signature(AnomalyDetector.fit).parameters["backbone"].default,
                **{name: value for name, value in DetectorSettings.defaults().items() if name in FIT_OPTIONS}}
CHECKPOINT_KEY = "zsad_detector"
CHECKPOINT_FORMAT = 1


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """anomalib's float images [B, 3, H, W] in [0, 1] → uint8 [B, H, W, 3]. An 8-bit file read by anomalib (v / 255 in
    float32) comes back as exactly its stored values; resized images are quantised as zsad quantises float tensors."""
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ConfigError(f"Zsad expects anomalib's RGB images, float [B, 3, H, W] in [0, 1]; got {images.dtype} of shape {tuple(images.shape)}.")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ConfigError(f"Zsad got images with values from {lo:.3g} to {hi:.3g}, outside [0, 1]: a normalising transform (e.g. ImageNet's "
                          "Normalize) ran before it. Give Zsad its own pre-processor (leave pre_processor at its default, or use "
                          "Zsad.configure_pre_processor(image_size=...)) and no Normalize in the datamodule's augmentations.")
    return (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def _names(paths: Optional[Sequence[str]], count: int) -> list[str]:
    """Names for zsad's hashed split: the paths relative to their common folder (as `zsad fit <folder>` names its images);
    image_00000, ... when anomalib gave no paths."""
    if not paths or len(paths) != count or any(not p for p in paths):
        return [f"image_{i:05d}" for i in range(count)]
    resolved = [Path(p).resolve() for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    names = [p.relative_to(root).as_posix() for p in resolved]
    if len(set(names)) != len(names):
        raise ConfigError(f"The training set names some images more than once (e.g. {sorted(n for n in names if names.count(n) > 1)[0]}); zsad's "
                          "fit/calibration split needs each image once. Remove the duplicates from the training folder.")
    return names


class ZsadTorchModel(nn.Module):
    """The fitted `AnomalyDetector` behind a tensor interface: float images [B, 3, H, W] in [0, 1] in, anomalib's
    `InferenceBatch` out (`forward`), or every output zsad has (`predict`). Holds no parameters: the detector is plain data."""

    def __init__(self) -> None:
        super().__init__()
        self.detector: Optional[AnomalyDetector] = None
        self._image_scale: Optional[tuple[float, float]] = None
        self._map_scale: Optional[tuple[float, float]] = None

    def set_detector(self, detector: AnomalyDetector) -> None:
        """Use `detector`; the normalisation scales follow from its calibration (outputs.normalise)."""
        if detector.calibration is None:
            raise ConfigError("Zsad needs a detector with calibration (AnomalyDetector.fit); a `zsad evaluate` prefix has none.")
        self.detector = detector
        # images: threshold at 0.5, the calibration median at 0.25 (the ConformalPostProcessor's map of scores)
        self._image_scale = image_scale(detector.calibration)
        # maps: zsad's overlay colour scale, from the typical calibration map value to twice the outline threshold's distance
        cal, maps = detector.calibration, detector.maps
        # a folder saved before the calibration maps' maxima were kept has only the fitted scale (threshold, vmin, vmax)
        self._map_scale = map_scale(cal) if cal.has_maps else _scale(float(maps.threshold), float(maps.vmin), float(maps.vmax) - float(maps.vmin))

    def require_detector(self) -> AnomalyDetector:
        if self.detector is None:
            raise ConfigError("This Zsad model is not fitted: run Engine().fit(model, datamodule=...) first, or pass the checkpoint of a fitted "
                              "one (Engine().test(model, datamodule=..., ckpt_path=...) or Zsad.load_from_checkpoint(...)).")
        return self.detector

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """pred_score, pred_label, anomaly_map [B, 1, H, W], pred_mask, p_value and zsad_score (raw) of a batch."""
        det = self.require_detector()
        device, (height, width) = images.device, images.shape[-2:]
        arr = _to_uint8(images)
        results = list(det.iter_scores(list(arr), batch_size=len(arr), with_maps=True))
        scores = np.array([r.score for r in results], dtype=np.float64)
        raw_maps = np.stack([upsample(torch.from_numpy(r.map), (height, width)) for r in results]).astype(np.float64)
        as_tensor = lambda a, dtype: torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)
        return {
            "pred_score": as_tensor(normalise(scores, self._image_scale), torch.float32),
            "pred_label": as_tensor(np.array([r.is_anomaly for r in results], dtype=bool), torch.bool),
            "anomaly_map": as_tensor(normalise(raw_maps, self._map_scale), torch.float32)[:, None],
            "pred_mask": as_tensor(raw_maps > float(det.maps.threshold), torch.bool)[:, None],
            "p_value": as_tensor(np.array([r.p_value for r in results]), torch.float64),
            "zsad_score": as_tensor(scores, torch.float64),
        }

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        out = self.predict(images)
        return InferenceBatch(pred_score=out["pred_score"], pred_label=out["pred_label"], anomaly_map=out["anomaly_map"], pred_mask=out["pred_mask"])


class ZsadPostProcessor(PostProcessor):
    """Passes Zsad's outputs through unchanged: its decisions are zsad's conformal ones and its scores are already in [0, 1].

    anomalib's default PostProcessor would learn an F1-adaptive threshold and min-max statistics on the validation set and
    overwrite them; the ConformalPostProcessor would calibrate a second time on validation images, when zsad has calibrated
    on held-out training normals already (so Zsad needs no particular val_split_mode)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(enable_normalization=False, enable_thresholding=False, **kwargs)

    def post_process_batch(self, batch: Batch) -> None:
        del batch  # nothing to change

    def forward(self, predictions: InferenceBatch) -> InferenceBatch:
        return predictions


class Zsad(MemoryBankMixin, AnomalibModule):
    """zsad's diffusion detector (`AnomalyDetector`) as a one-class anomalib model.

    Every option is a `DetectorSettings` field (or fit's backbone), with its default where left at None (`FIT_DEFAULTS`); `device` defaults to
    the device Lightning puts the model on. The backbone is a checkpoint file, a preset name (`zsad-demo`, ...) or an
    `hf://` address, given as a string so that it can be stored in the checkpoint.
    """

    def __init__(self, backbone: Optional[str] = None, scorer: Optional[str] = None, scorer_options: Optional[dict] = None,
                 false_alarm_rate: Optional[float] = None, shots: Optional[int] = None, working_size: Optional[int] = None,
                 tile_stride: Optional[int] = None, device: Optional[str] = None, cache_dir: Optional[str] = None, batch_size: Optional[int] = None,
                 network_batch: Optional[int] = None, seed: Optional[int] = None, map_combination: Optional[str] = None,
                 aggregation: Optional[str] = None, top_k: Optional[float] = None, tile_position: Optional[bool] = None,
                 precision: Optional[str] = None, require_rate: Optional[bool] = None, blend: Optional[str] = None,
                 preset: Optional[str] = None, detector_kind: Optional[str] = None, pre_processor: nn.Module | bool = True,
                 post_processor: nn.Module | bool = True, evaluator: Any = True, visualizer: Any = True) -> None:
        super().__init__(pre_processor=pre_processor, post_processor=post_processor, evaluator=evaluator, visualizer=visualizer)
        given = {name: value for name, value in locals().items() if name in FIT_OPTIONS}
        self.fit_options = _checked_options({name: value for name, value in given.items() if value is not None})
        self.model = ZsadTorchModel()
        self._train_images: list[np.ndarray] = []
        self._train_paths: list[str] = []

    # -- anomalib's model contract -----------------------------------------------------------------------------------------
    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """One epoch (the images are collected once), no sanity validation (nothing is fitted yet), one device, no clipping."""
        return {"gradient_clip_val": 0, "max_epochs": 1, "num_sanity_val_steps": 0, "devices": 1}

    @property
    def learning_type(self) -> LearningType:
        return LearningType.ONE_CLASS

    @staticmethod
    def configure_optimizers() -> None:
        return None  # no gradient: the detector is fitted in closed form at the end of the epoch

    @staticmethod
    def configure_pre_processor(image_size: Optional[tuple[int, int]] = None) -> PreProcessor:
        """zsad's preprocessing runs inside the detector, so by default this does nothing (no ImageNet normalisation, no
        resize). `image_size` adds anomalib's Resize first (antialiased, on float images; anomalib moves it into the
        datamodule, before batching), e.g. to shrink large images or to batch images of different sizes."""
        return PreProcessor(transform=None if image_size is None else Resize(tuple(image_size), antialias=True))

    def configure_post_processor(self) -> PostProcessor:
        return ZsadPostProcessor()

    # -- fitting -------------------------------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        """A new fit collects afresh (a second Engine.fit refits rather than keeping the first detector)."""
        self._train_images, self._train_paths = [], []
        self._is_fitted = torch.tensor([False], device=self.device)

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> None:
        """Keep the batch's images (8-bit) and paths; nothing is learned per step."""
        del args, kwargs
        arr = _to_uint8(batch.image)
        self._train_images.extend(arr)
        paths = getattr(batch, "image_path", None)
        self._train_paths.extend(list(paths) if paths is not None else [""] * len(arr))

    def fit(self) -> None:
        """AnomalyDetector.fit on the collected images: hashed fit/calibration split, density model, calibration."""
        from PIL import Image

        if not self._train_images:
            raise ConfigError("Zsad collected no training images: the datamodule's training set is empty. Point it at a folder of normal images.")
        names = _names(self._train_paths, len(self._train_images))
        order = sorted(range(len(names)), key=names.__getitem__)  # the folder's sorted order, as `zsad fit <folder>` reads it
        names = [names[i] for i in order]
        pictures = [Image.fromarray(self._train_images[i], "RGB") for i in order]
        images = Images(PILSource(pictures, names), names, None, "anomalib training images")
        options = {"device": str(self.device), **self.fit_options}
        self.model.set_detector(AnomalyDetector.fit(images, **options))
        self._train_images, self._train_paths = [], []

    @property
    def detector(self) -> AnomalyDetector:
        """The fitted AnomalyDetector (its card, threshold, calibration; `detector.save(folder)` writes a `zsad fit` folder)."""
        return self.model.require_detector()

    # -- outputs -------------------------------------------------------------------------------------------------------------
    def _step(self, batch: Batch) -> Batch:
        out = self.model.predict(batch.image)
        extras = {key: out.pop(key) for key in ("p_value", "zsad_score")}
        batch = batch.update(**out)
        for key, value in extras.items():  # not anomalib fields: extra attributes of this batch object
            setattr(batch, key, value)
        return batch

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> Batch:
        del args, kwargs
        return self._step(batch)

    def test_step(self, batch: Batch, *args: Any, **kwargs: Any) -> Batch:
        del args, kwargs
        return self._step(batch)

    def predict_step(self, batch: Batch, *args: Any, **kwargs: Any) -> Batch:
        del args, kwargs
        return self._step(batch)

    # -- checkpoints -----------------------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The detector folder as plain data: JSON and Markdown files as text, npz files as tensors."""
        super().on_save_checkpoint(checkpoint)
        if self.model.detector is not None:
            checkpoint[CHECKPOINT_KEY] = _folder_to_plain(self.model.detector)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild the detector from the checkpoint (the backbone from this model's `backbone` if given, else the recorded one)."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            if checkpoint.get("state_dict", {}).get("_is_fitted", torch.tensor([False])).any():
                raise ConfigError("This checkpoint has no zsad detector: it was not saved by zsad's Zsad model. Fit Zsad with Engine().fit.")
            return  # saved before the end of the training epoch: nothing fitted yet
        device = self.fit_options.get("device", str(self.device))
        self.model.set_detector(_plain_to_detector(state, device, self.fit_options.get("backbone")))


def _checked_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options, checked where a mistake would otherwise surface only after the training epoch."""
    from zsad.detection.conformal import check_rate
    from zsad.scoring.scorers import build_scorer

    backbone = options.get("backbone")
    if backbone is not None and not isinstance(backbone, (str, Path)):
        raise ConfigError(f"Zsad's backbone must be a checkpoint path, a preset name or an hf:// address (a string, stored in the checkpoint); "
                          f"got a {type(backbone).__name__}. Pass the path it was loaded from.")
    if backbone is not None:
        options["backbone"] = str(backbone)
    if "cache_dir" in options:
        options["cache_dir"] = str(options["cache_dir"])
    if "false_alarm_rate" in options:
        options["false_alarm_rate"] = check_rate(options["false_alarm_rate"])
    if "scorer_options" in options and not isinstance(options["scorer_options"], dict):
        raise ConfigError(f"scorer_options must be a dict of the scorer's options, e.g. {{'steps': 10}}; got {options['scorer_options']!r}.")
    build_scorer(options.get("scorer", FIT_DEFAULTS["scorer"]), **options.get("scorer_options", {}))  # an unknown scorer or option fails now
    DetectorSettings(detector_kind=options.get("detector_kind"))  # an unknown detector kind too
    return options


_TEXT_SUFFIXES = (".json", ".md")


def _folder_to_plain(detector: AnomalyDetector) -> dict[str, Any]:
    """{"format", "texts": {file: text}, "arrays": {file: {key: tensor}}} of the folder `detector.save` writes."""
    with tempfile.TemporaryDirectory(prefix="zsad-ckpt-") as tmp:
        folder = detector.save(Path(tmp) / "detector")
        texts, arrays = {}, {}
        for path in sorted(folder.iterdir()):
            if path.suffix in _TEXT_SUFFIXES:
                texts[path.name] = path.read_text()
            elif path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as data:
                    arrays[path.name] = {key: torch.from_numpy(np.array(data[key])) for key in data.files}
            else:
                raise ConfigError(f"The detector folder holds {path.name}, which Zsad cannot store in a checkpoint as plain data.")
    return {"format": CHECKPOINT_FORMAT, "texts": texts, "arrays": arrays}


def _plain_to_detector(state: dict[str, Any], device: str, backbone: Optional[str]) -> AnomalyDetector:
    """The detector folder written back from the checkpoint, then loaded by `AnomalyDetector.load` (its own checks)."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"This checkpoint's zsad detector has format {state.get('format')!r}; this zsad reads format {CHECKPOINT_FORMAT}. "
                          "Fit the model again with Engine().fit.")
    with tempfile.TemporaryDirectory(prefix="zsad-ckpt-") as tmp:
        folder = Path(tmp)
        for name, text in state["texts"].items():
            (folder / Path(name).name).write_text(text)
        for name, arrays in state["arrays"].items():
            np.savez(folder / Path(name).name, **{key: value.cpu().numpy() for key, value in arrays.items()})
        return AnomalyDetector.load(folder, device=device, backbone=backbone)
