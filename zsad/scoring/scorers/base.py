"""The scorer interface: `features_and_maps(backbone, images, seeds) -> (float64 [B, D], maps [B, H, W] | None)`.

A scorer is complete behind this interface: the pipeline (extraction, detectors, `zsad score`, the Python
API) never names one. What a scorer declares:
* `feature_names`, `detector` (gmm | kde), `version` (pinned by tests/test_golden_features.py);
* `features_and_maps`: features and, where the method has them, per-pixel anomaly maps from the same
  network pass (`compute` is the features alone);
* `sources` and `derive`: when its features are a function of other scorers' features (DiffPath-1D of
  DiffPath-6D's, the fused scorer of its two halves), the pipeline extracts those and derives these;
* `network_evaluations_per_image`, `forward_equivalents_per_image` and `rows_per_call`, for cost reports and
  padding checks;
* `published_auroc`: published numbers of the method, keyed by (ID, OOD) dataset names."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, ClassVar, Optional, Sequence

import torch

from zsad.diffusion.backbone import Backbone
from zsad.errors import FeatureError


def pixel_digest(image: torch.Tensor) -> bytes:
    """SHA-256 of one preprocessed image's float32 pixels (C-contiguous, on the CPU)."""
    return hashlib.sha256(image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).digest()


def image_seeds(seed: int, images: torch.Tensor) -> torch.Tensor:
    """The per-image noise seeds of docs/method.md §2: a hash of (global seed, the image's preprocessed
    pixels), int64 [B]. An image keeps its seed, and so its features, in any dataset, folder, position,
    batch or process, and in `zsad evaluate`, `zsad score` and the Python API alike."""
    prefix = int(seed).to_bytes(8, "little", signed=True)
    out = []
    for image in images:
        digest = hashlib.sha256(prefix + pixel_digest(image)).digest()
        out.append(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return torch.tensor(out, dtype=torch.int64)


def per_image_noise(ids: torch.Tensor, shape: Sequence[int], draws: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N(0, I) noise, `draws` × `shape` per image from a generator seeded by its id: [B, draws, *shape].

    Drawn on the CPU, so the values do not depend on the device, the batch or the process. float32 draws
    (what every run uses) come from torch's vectorised sampler, whose last bits differ on a CPU without
    AVX2 (ATEN_CPU_CAPABILITY=default); float64 draws (the golden tests' dtype-exact path) are the same on
    every instruction set."""
    out = torch.empty((len(ids), draws, *shape), dtype=dtype)
    for row, image_id in enumerate(ids.tolist()):
        g = torch.Generator().manual_seed(int(image_id))
        out[row] = torch.randn((draws, *shape), generator=g, dtype=dtype)
    return out


class FixedBatchEps:
    """Calls the backbone only on batches of exactly `n` images (the tail chunk zero-padded).

    CPU and GPU kernels pick their blocking, and so their summation order, from the batch size: the
    same image can give a different ε̂ in the last bit in a batch of 1 and in a batch of 7. With one
    fixed call shape every image is computed the same way wherever it sits, so features are
    bit-identical for any loader batch size, order or process count. No layer mixes images, so the
    padding rows never touch the real ones."""

    def __init__(self, backbone: Backbone, n: int):
        self.backbone, self.n = backbone, int(n)
        self.alphas_cumprod = backbone.alphas_cumprod
        self.num_timesteps = backbone.num_timesteps
        self.image_size = backbone.image_size

    def predict_eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        rows, n = x.shape[0], self.n
        pad = (-rows) % n
        if pad:
            x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
            t = torch.cat([t, t.new_zeros(pad)])
        # in the input's dtype whatever the network ran in (bf16/fp16 autocast): the scorers' maths stays float32
        out = [self.backbone.predict_eps(x[i : i + n], t[i : i + n]).to(x.dtype) for i in range(0, len(x), n)]
        return torch.cat(out)[:rows]


def padding_share(rows: int, call_size: int) -> float:
    """Fraction of network rows that are zero padding when `rows` real rows go through calls of `call_size`."""
    total = -(-rows // call_size) * call_size
    return (total - rows) / total


@dataclasses.dataclass
class Scorer:
    """Base: subclasses are dataclasses of their options and implement `features_and_maps`.

    `network_batch` is the fixed size of every network call (see FixedBatchEps); it changes speed
    and memory, never the features on a given device. None: 8 on CPU, 256 on GPU."""

    network_batch: Optional[int] = None

    name: ClassVar[str] = ""
    detector: ClassVar[str] = "gmm"  # the detector that fits these features: gmm | kde
    # Part of the feature recipe and the cache key: bump it whenever `features_and_maps` changes what it
    # returns. tests/test_golden_features.py pins the features of every version. (A scorer built of others
    # may make it a property that includes theirs.)
    version: ClassVar[int | str] = 1
    # What the per-pixel maps of `features_and_maps` show; None when the scorer has no maps.
    map_meaning: ClassVar[Optional[str]] = None
    # Published AUROC of the method, {(ID dataset, OOD dataset): AUROC}, with where it comes from and the
    # base model it was measured with (a table shows it only beside a backbone trained on that data).
    published_auroc: ClassVar[dict] = {}
    published_source: ClassVar[str] = ""
    published_trained_on: ClassVar[str] = ""

    @property
    def feature_names(self) -> list[str]:  # pragma: no cover - interface
        raise NotImplementedError

    def features_and_maps(self, backbone: Backbone, images: torch.Tensor, seeds: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                        Optional[torch.Tensor]]:  # pragma: no cover
        """(features [B, D], per-pixel anomaly maps [B, H, W] or None) of preprocessed images, from one
        pass of the network. Maps are ≥ 0 and larger where the image is less like the training data."""
        raise NotImplementedError

    def compute(self, backbone: Backbone, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The features alone."""
        return self.features_and_maps(backbone, images, ids)[0]

    def options(self) -> dict:
        """Everything that determines the features (part of the feature recipe and the cache key)."""
        opts = dataclasses.asdict(self)
        opts.pop("network_batch")
        return {"name": self.name, **opts}

    def network_evaluations_per_image(self, num_timesteps: int) -> int:
        """Network evaluations (ε̂ calls) each image costs: one per kept step by default."""
        return int(getattr(self, "steps", 1))

    def forward_equivalents_per_image(self, num_timesteps: int) -> float:
        """What an image costs in plain forward passes: the network evaluations, priced higher where a pass also
        differentiates (SCOPED's vJP or JVP). The cost plots' axis, so every scorer is priced alike."""
        return float(self.network_evaluations_per_image(num_timesteps))

    def sources(self) -> list["Scorer"]:
        """Scorers whose features determine these without the network (see `derive`); [] when none."""
        return []

    def derive(self, source_features: Sequence) -> Any:
        """These features from the features of `sources()` (torch tensors or numpy arrays, in that order),
        bit-identical to `compute`."""
        raise NotImplementedError(f"{self.name} is not derived from other scorers' features")

    def rows_per_call(self, batch: int) -> int:
        """Images per network call when `batch` images come in: one call per kept step by default."""
        return batch

    def network_batch_for(self, device: torch.device | str) -> int:
        """The fixed network call size: `network_batch`, or 8 on CPU and 256 on GPU."""
        return int(self.network_batch or (256 if torch.device(device).type == "cuda" else 8))

    def network(self, backbone: Backbone) -> FixedBatchEps:
        """The backbone as this scorer calls it: fixed-size batches."""
        return FixedBatchEps(backbone, self.network_batch_for(backbone.alphas_cumprod.device))

    @torch.inference_mode()
    def __call__(
        self, backbone: Backbone, images: torch.Tensor, ids: Optional[torch.Tensor | Sequence[int]] = None, seed: int = 0, with_maps: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Features float64 [B, D] of preprocessed images [B, 3, S, S] in [-1, 1]; with `with_maps`, also
        the per-pixel maps float32 [B, S, S] (None when the scorer has none), from the same network pass.

        ids: per-image noise seeds; by default `image_seeds(seed, images)`, what `zsad evaluate` and
        `zsad score` use, so the Python API gives the same features for the same image."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W]; got {tuple(images.shape)}")
        ids = image_seeds(seed, images) if ids is None else torch.as_tensor(ids, dtype=torch.int64).cpu()
        if len(ids) != len(images):
            raise ValueError(f"one id per image: got {len(images)} images and {len(ids)} ids")
        device = backbone.alphas_cumprod.device
        features, maps = self.features_and_maps(self.network(backbone), images.to(device=device, dtype=torch.float32), ids)
        features = features.to(torch.float64).cpu()
        bad = (~torch.isfinite(features)).any(dim=1).nonzero().flatten().tolist()
        if bad:
            raise FeatureError(
                f"{self.name} produced non-finite features for {len(bad)} image(s) at batch positions {bad[:10]} "
                f"(ids {ids[bad[:10]].tolist()}); check the inputs are finite and in [-1, 1] and the backbone is sound."
            )
        if not with_maps:
            return features
        return features, None if maps is None else maps.to(torch.float32).cpu()


def moments(x: torch.Tensor, d: torch.Tensor, absolute: bool = False) -> torch.Tensor:
    """[Σx, Σx², Σx³, Σd, Σd², Σd³] per image over all non-batch axes, accumulated in float64.

    With `absolute`, the odd moments use |x| and |d| instead of the signed values."""
    x, d = x.to(torch.float64).flatten(1), d.to(torch.float64).flatten(1)
    if absolute:
        xa, da = x.abs(), d.abs()
        cols = [xa.sum(1), (x * x).sum(1), (xa**3).sum(1), da.sum(1), (d * d).sum(1), (da**3).sum(1)]
    else:
        cols = [x.sum(1), (x * x).sum(1), (x**3).sum(1), d.sum(1), (d * d).sum(1), (d**3).sum(1)]
    return torch.stack(cols, dim=1)


MOMENT_KINDS = ("signed", "abs", "norms")


def moment_features(x: torch.Tensor, d: torch.Tensor, kind: str = "signed") -> torch.Tensor:
    """6 features of a path x [B, K, …] and its time derivative d, per `kind`:
    signed [Σx, Σx², Σx³, Σd, Σd², Σd³]; abs [Σ|x|, Σx², Σ|x|³, …]; norms [Σ|x|, (Σx²)^½, (Σ|x|³)^⅓, …]."""
    if kind == "norms":
        m = moments(x, d, absolute=True)
        return torch.stack([m[:, 0], m[:, 1].sqrt(), m[:, 2] ** (1 / 3), m[:, 3], m[:, 4].sqrt(), m[:, 5] ** (1 / 3)], dim=1)
    return moments(x, d, absolute=kind == "abs")
