"""`ConformalPostProcessor`: split-conformal p-values and decisions at a chosen false-alarm rate for any anomalib model.

anomalib's `PostProcessor` is an `nn.Module` and a Lightning `Callback`: the model lists it among its callbacks, it sees
every validation batch (raw scores, before any post-processing) and rewrites every test and predict batch. This subclass
keeps that plumbing and replaces what it computes:

* validation (the calibration): the raw image scores of the images labelled normal (gt_label 0), and per image the
  maximum and median of its anomaly map. Images labelled anomalous never enter calibration; batches without labels are
  refused. A validation set that is a copy of the test set (val_split_mode "same_as_test", the default of MVTecAD, VisA,
  MPDD, Kolektor and Real-IAD) is refused before anything runs: it leaks test images, anomalies included, into the threshold.
* test and predict: `pred_label` = p ≤ α (zsad.detection.conformal), `pred_mask` = map above the k-th largest calibration map
  maximum, `pred_score` and `anomaly_map` normalised into (0, 1) with the thresholds at 0.5 (outputs.normalise), and the
  p-values as an extra attribute `p_value` on the batch.
* checkpoint: the calibration arrays are buffers (so in `state_dict`, resized on load), α and the calibration's source go
  through anomalib's `checkpoint_config`, so `Engine().predict(model, ckpt_path=...)` gives the same decisions.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import numpy as np
import torch

from zsad.detection.calibration import Calibration
from zsad.detection.conformal import check_rate, min_calibration
from zsad.errors import ConfigError
from zsad.integrations.anomalib.outputs import card_text, image_scale, map_scale, normalise
from zsad.integrations.anomalib.version import require_anomalib

require_anomalib()  # before anomalib's own imports: an untested version fails here, with the range and the install command

from anomalib.data import Batch, InferenceBatch  # noqa: E402
from anomalib.post_processing import PostProcessor  # noqa: E402
from lightning import LightningModule, Trainer  # noqa: E402

_BUFFERS = ("calibration_scores", "calibration_map_maxima", "calibration_map_medians")
# how a rate this calibration cannot reach is mended here (Calibration.require_rate's remedy)
_REMEDY = ("Give the validation set more normal images (a larger val_split_ratio), or choose α ≥ {smallest:g} "
           "(post_processor.false_alarm_rate = ...).")
_LEAKING_SPLITS = {"same_as_test"}


def _split_mode(datamodule: Any) -> Optional[str]:
    """The datamodule's val_split_mode as a plain string ("from_test", ...), or None when it has none."""
    mode = getattr(datamodule, "val_split_mode", None)
    return None if mode is None else str(getattr(mode, "value", mode))


def _require_finite(scores: torch.Tensor) -> None:
    bad = int((~torch.isfinite(scores)).sum())
    if bad:
        raise ConfigError(f"{bad} calibration scores are not finite; the model's scores on normal validation images must be numbers. "
                          "Check the model's outputs, then calibrate again: Engine().validate(model, datamodule=...).")


def _image_scores(pred_score: Optional[torch.Tensor], anomaly_map: Optional[torch.Tensor]) -> torch.Tensor:
    """One raw score per image [B] (float64): the model's pred_score, or the maximum of its map as anomalib does without one."""
    if pred_score is not None:
        return pred_score.detach().reshape(pred_score.shape[0], -1)[:, 0].to(torch.float64)
    if anomaly_map is None:
        raise ConfigError("The model returned neither pred_score nor anomaly_map, so there is nothing to threshold.")
    return anomaly_map.detach().flatten(1).amax(dim=1).to(torch.float64)


class ConformalPostProcessor(PostProcessor):
    """Split-conformal decisions at false-alarm rate `false_alarm_rate` (α), calibrated on normal validation images.

    Pass it as any anomalib model's `post_processor`; `enable_normalization=False` leaves `pred_score` and `anomaly_map`
    raw (decisions and masks are the same either way).
    """

    def __init__(self, false_alarm_rate: float = 0.05, enable_normalization: bool = True, **kwargs: Any) -> None:
        super().__init__(enable_normalization=enable_normalization, enable_thresholding=True, **kwargs)
        self.false_alarm_rate = false_alarm_rate
        self.calibration_source = ""  # e.g. "Folder, val_split_mode from_test": said on the card
        self.excluded_anomalous = 0  # validation images labelled anomalous, left out of calibration
        # float64 so that scores round-trip exactly through a checkpoint; sizes change on calibration and on load
        for name in _BUFFERS:
            self.register_buffer(name, torch.zeros(0, dtype=torch.float64))
        self.calibration_scores: torch.Tensor
        self.calibration_map_maxima: torch.Tensor
        self.calibration_map_medians: torch.Tensor
        self._collected: Optional[dict[str, list]] = None

    # -- the rate and the calibration ------------------------------------------------------------------------------------
    @property
    def false_alarm_rate(self) -> float:
        return self._alpha

    @false_alarm_rate.setter
    def false_alarm_rate(self, value: float) -> None:
        self._alpha = check_rate(value)  # a rate the calibration cannot reach is refused where decisions are made

    @property
    def calibration(self) -> Calibration:
        """The conformal state at the current α, as zsad's detectors hold it (zsad.detection.calibration)."""
        _require_finite(self.calibration_scores)  # also scores that came from a checkpoint
        has_maps = len(self.calibration_map_maxima) == len(self.calibration_scores) > 0
        return Calibration(
            self.false_alarm_rate, self.calibration_scores.cpu().numpy(),
            self.calibration_map_maxima.cpu().numpy() if has_maps else None,
            float(np.median(self.calibration_map_medians.cpu().numpy())) if has_maps else None,
        )

    def card(self, model: str = "") -> str:
        """The card (Markdown): calibration size, thresholds, and the Beta spread of the realised false-alarm rate."""
        return card_text(self.calibration, self.calibration_source, self.excluded_anomalous, model)

    @property
    def _checkpoint_config_keys(self) -> tuple[str, ...]:
        return (*super()._checkpoint_config_keys, "false_alarm_rate", "calibration_source", "excluded_anomalous")

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """Resize the calibration buffers to the checkpoint's; a checkpoint without them was saved with another post-processor."""
        missing = [name for name in _BUFFERS if prefix + name not in state_dict]
        if missing:
            raise ConfigError(f"This checkpoint holds no conformal calibration ({prefix}{missing[0]} is missing): it was saved with another "
                              "post-processor. Calibrate the model instead: Engine().validate(model, datamodule=...) with normal validation images.")
        for name in _BUFFERS:
            getattr(self, name).resize_(state_dict[prefix + name].shape)
        state_dict.pop(prefix + "calibration_map_top", None)  # checkpoints before 2026-12-07 kept the largest map value, now derived
        super()._load_from_state_dict(state_dict, prefix, *args)

    # -- calibration: validation --------------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Refuse a validation set that copies the test set before anything runs, and note where calibration comes from."""
        del pl_module
        if str(getattr(stage, "value", stage)) not in ("fit", "validate"):
            return
        datamodule = trainer.datamodule
        mode = _split_mode(datamodule)
        if mode in _LEAKING_SPLITS:
            raise ConfigError(
                f"{type(datamodule).__name__} has val_split_mode='{mode}': its validation set is a copy of the test set, so calibrating the "
                "conformal threshold on it leaks test images, anomalies included, into the threshold and voids the false-alarm rate. "
                "Use val_split_mode='from_train' (a share of the training normals, held out from fitting) or 'from_test' (moves its "
                "images out of the test set), e.g. MVTecAD(..., val_split_mode='from_test').")
        self.calibration_source = f"{type(datamodule).__name__}, val_split_mode {mode}" if mode else "validation dataloaders"

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        del pl_module
        # every validation epoch calibrates afresh (the model may have changed); the sanity check calibrates nothing
        self._collected = None if trainer is not None and trainer.sanity_checking else {"scores": [], "maxima": [], "medians": [], "excluded": 0}

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Batch, *args: Any, **kwargs: Any) -> None:
        """Keep the raw scores (and map statistics) of the images labelled normal."""
        del pl_module, args, kwargs
        if trainer is not None and trainer.sanity_checking:
            return
        if self._collected is None:  # called without on_validation_epoch_start (anomalib's tiled-ensemble style): start here
            self.on_validation_epoch_start(trainer, None)
        if trainer is not None and trainer.world_size > 1:
            raise ConfigError("The conformal post-processor calibrates on one device (a distributed sampler would pad the validation set with "
                              "copies): run Engine(devices=1).validate(model, datamodule=...) to calibrate, then test or predict anywhere.")
        if outputs.gt_label is None:
            raise ConfigError("A validation batch has no labels (gt_label), so normal images cannot be told from anomalous ones and the "
                              "calibration could include anomalies. Use a datamodule whose validation images are labelled, e.g. Folder or "
                              "MVTecAD with val_split_mode='from_train' or 'from_test'.")
        normal = outputs.gt_label.detach().reshape(-1).to(torch.bool).logical_not().cpu()
        scores = _image_scores(outputs.pred_score, outputs.anomaly_map).cpu()
        self._collected["scores"].append(scores[normal])
        self._collected["excluded"] += int((~normal).sum())
        if outputs.anomaly_map is not None:
            maps = outputs.anomaly_map.detach().flatten(1).to(torch.float64).cpu()[normal]
            self._collected["maxima"].append(maps.amax(dim=1))
            self._collected["medians"].append(maps.median(dim=1).values)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Store the calibration in the buffers; warn when α cannot be reached with it (decisions will refuse)."""
        del pl_module
        if self._collected is None:
            return
        got, self._collected = self._collected, None
        scores = torch.cat(got["scores"]) if got["scores"] else torch.zeros(0, dtype=torch.float64)
        if len(scores) == 0:
            raise ConfigError(f"The validation set held no image labelled normal ({got['excluded']} anomalous), so there is nothing to calibrate "
                              "on. Calibrate on normal images the model was not fitted on: val_split_mode='from_train' or 'from_test'.")
        _require_finite(scores)
        maps = len(got["maxima"]) == len(got["scores"])  # every batch had maps
        device = self.calibration_scores.device
        self.calibration_scores = scores.to(device)
        self.calibration_map_maxima = torch.cat(got["maxima"]).to(device) if maps else torch.zeros(0, dtype=torch.float64, device=device)
        self.calibration_map_medians = torch.cat(got["medians"]).to(device) if maps else torch.zeros(0, dtype=torch.float64, device=device)
        self.excluded_anomalous = got["excluded"]
        if not self.calibration.reaches():
            warnings.warn(f"Calibrated on {len(scores)} normal images, too few for α = {self.false_alarm_rate:g} (it needs at least "
                          f"{min_calibration(self.false_alarm_rate)}): test and predict will refuse to decide until α is raised "
                          "(post_processor.false_alarm_rate = ...) or the model is validated on more normal images.", stacklevel=2)

    # -- decisions: test and predict ----------------------------------------------------------------------------------------
    def _decide(self, pred_score: Optional[torch.Tensor], anomaly_map: Optional[torch.Tensor]) -> dict[str, Optional[torch.Tensor]]:
        """Decisions, p-values, masks and normalised outputs of raw model outputs."""
        cal, alpha = self._checked()
        raw = _image_scores(pred_score, anomaly_map).cpu().numpy()
        shape_of = pred_score if pred_score is not None else raw
        device = (pred_score if pred_score is not None else anomaly_map).device
        label = torch.from_numpy(cal.decide(raw, alpha)).reshape(shape_of.shape).to(device)
        out: dict[str, Optional[torch.Tensor]] = {"pred_label": label, "p_value": torch.from_numpy(cal.p_values(raw)).to(device),
                                                  "pred_score": pred_score, "anomaly_map": anomaly_map, "pred_mask": None}
        if self.enable_normalization:
            score = normalise(raw, image_scale(cal, alpha)).reshape(shape_of.shape)
            out["pred_score"] = torch.from_numpy(score).to(device=device, dtype=pred_score.dtype if pred_score is not None else torch.float32)
        if anomaly_map is not None and cal.has_maps:
            raw_map = anomaly_map.detach().to(torch.float64)
            out["pred_mask"] = raw_map > cal.map_threshold(alpha)
            if self.enable_normalization:
                normal = normalise(raw_map.cpu().numpy(), map_scale(cal, alpha))
                out["anomaly_map"] = torch.from_numpy(normal).to(device=device, dtype=anomaly_map.dtype)
        return out

    def _checked(self) -> tuple[Calibration, float]:
        """The calibration and its α, or a clear error: none yet, or too few images for α."""
        cal = self.calibration
        if cal.n == 0:
            raise ConfigError("The conformal post-processor has no calibration scores: validate the model on normal images it was not fitted on "
                              "(Engine.fit or Engine.validate with a datamodule whose val_split_mode is 'from_train' or 'from_test'), or load a "
                              "checkpoint saved after that.")
        return cal, cal.require_rate(remedy=_REMEDY)

    def post_process_batch(self, batch: Batch) -> None:
        """Rewrite a test or predict batch in place; the p-values ride along as `batch.p_value`."""
        out = self._decide(batch.pred_score, batch.anomaly_map)
        batch.pred_score, batch.anomaly_map, batch.pred_label = out["pred_score"], out["anomaly_map"], out["pred_label"]
        if out["pred_mask"] is not None:
            batch.pred_mask = out["pred_mask"]
        batch.p_value = out["p_value"]  # not an anomalib field: an extra attribute of this batch object

    def forward(self, predictions: InferenceBatch) -> InferenceBatch:
        """The same for anomalib's inference path (`model(images)`, exported models)."""
        out = self._decide(predictions.pred_score, predictions.anomaly_map)
        return InferenceBatch(pred_score=out["pred_score"], pred_label=out["pred_label"], anomaly_map=out["anomaly_map"], pred_mask=out["pred_mask"])

    # anomalib's own attributes, answered from the conformal state, for code that reads them (tiled ensemble, exporters)
    @property
    def image_threshold(self) -> torch.Tensor:
        cal, alpha = self._checked()
        return torch.tensor(cal.image_threshold(alpha))

    @property
    def pixel_threshold(self) -> torch.Tensor:
        cal, alpha = self._checked()
        return torch.tensor(cal.map_threshold(alpha))

    @property
    def normalized_image_threshold(self) -> torch.Tensor:
        return torch.tensor(0.5)

    @property
    def normalized_pixel_threshold(self) -> torch.Tensor:
        return torch.tensor(0.5)

