"""`scoped`: SCOPED's score-norm and score-curvature statistics (Barkley, Culbertson and Fridovich-Keil,
"Score-Curvature Out-of-distribution Proximity Evaluator for Diffusion", arXiv 2510.01456), docs/method.md §3.6.

At each noise level t, from x_t = sqrt(ᾱ_t)·x0 + σ_t·ε (one seeded ε per image, shared by the levels) and the
model's score s = −ε̂(x_t, t)/σ_t (σ_t = sqrt(1 − ᾱ_t)), two numbers per image:
* ‖s‖², the squared score norm;
* tr(∂s/∂x_t) by Hutchinson's estimator, the mean over `probes` seeded probes v of vᵀ(∂s/∂x_t)v.

The statistic that combines them, the levels kept (chosen on ID data only) and the KDE are the detector's
(zsad/scoring/scoped_detector.py): these features keep both parts, so every reading is one detector option."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Optional

import torch

from zsad.diffusion.backbone import Backbone
from zsad.diffusion.fast import plain_attention
from zsad.errors import ConfigError
from zsad.scoring.scorers.base import Scorer, per_image_noise
from zsad.scoring.scorers.trajectory import kept_timesteps

PROBE_KINDS = ("rademacher", "gaussian")
# How vᵀJv is computed: "reverse" takes vᵀJ by one backward pass (then the dot with v); "forward" takes Jv by
# forward-mode AD (torch.func.jvp, with attention on the plain path: torch 2.14's fused CPU attention kernel has no
# forward-mode rule). Both are exact up to float rounding; "reverse" measured faster on CPU
# (docs/speed.md), so it is the default.
JVP_MODES = ("reverse", "forward")
# One pass (forward with its vJP or JVP) in plain forwards: `make bench` (bench/bench_jvp.py), DiffPath's CelebA-32
# UNet, batch 8, 2 CPU cores, plain attention path (docs/speed.md).
PASS_COST = {"reverse": 2.2, "forward": 4.1}


def probes_from(noise: torch.Tensor, kind: str) -> torch.Tensor:
    """Hutchinson probes from N(0, I) draws: the draws themselves, or their signs (Rademacher ±1)."""
    if kind == "gaussian":
        return noise
    if kind == "rademacher":
        return torch.where(noise >= 0, 1.0, -1.0).to(noise.dtype)
    raise ConfigError(f"scoped: probe must be one of {', '.join(PROBE_KINDS)}; got '{kind}'.")


def eps_and_quadratic_forms(eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, t: torch.Tensor,
                            probes: torch.Tensor, mode: str = "reverse") -> tuple[torch.Tensor, torch.Tensor]:
    """(ε̂(x, t) [N, ...], vᵀ(∂ε̂/∂x)v [N, P]) for inputs x [N, ...] and probes [N, P, ...].

    Each (row, probe) pair is one row of a single network call, so P probes cost one call of N·P rows; ε̂ is
    that call's output for the first probe. Runs with gradients on whatever mode the caller is in."""
    if mode not in JVP_MODES:
        raise ConfigError(f"scoped: jvp must be one of {', '.join(JVP_MODES)}; got '{mode}'.")
    n, p = probes.shape[:2]
    with torch.inference_mode(False), torch.enable_grad():
        xs = x.detach().clone().repeat_interleave(p, dim=0)  # a plain tensor: inference tensors take no gradients
        ts = t.detach().clone().repeat_interleave(p, dim=0)
        vs = probes.detach().clone().flatten(0, 1).to(xs.dtype)
        if mode == "forward":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.MATH):
                eps, jv = torch.func.jvp(lambda z: eps_fn(z, ts), (xs,), (vs,))
            forms = (vs * jv).flatten(1).to(torch.float64).sum(1)
        else:
            xs.requires_grad_(True)
            eps = eps_fn(xs, ts)
            (vj,) = torch.autograd.grad(eps, xs, grad_outputs=vs)
            forms = (vj * vs).flatten(1).to(torch.float64).sum(1)
        return eps.detach().view(n, p, *x.shape[1:])[:, 0], forms.detach().view(n, p)


@dataclass
class SCOPED(Scorer):
    """[‖s‖², tr ∂s/∂x] at `levels` noise levels evenly spaced over time_range·(T−1) (or at explicit `timesteps`),
    the trace by Hutchinson with `probes` seeded probes per image and level. Fitted by the `scoped_kde` detector,
    which keeps every level by default (or those its ID-only rule picks), combines the two parts and fits a KDE. No maps."""

    levels: int = 6
    time_range: list = field(default_factory=lambda: [0.02, 0.5])
    timesteps: Optional[list] = None  # explicit integer timesteps instead of levels/time_range (deploy the chosen ones)
    probes: int = 1
    probe: str = "rademacher"
    jvp: str = "reverse"

    name: ClassVar[str] = "scoped"
    detector: ClassVar[str] = "scoped_kde"

    def __post_init__(self) -> None:
        if self.timesteps is not None:
            self.timesteps = [int(v) for v in self.timesteps]
            if not self.timesteps or len(set(self.timesteps)) != len(self.timesteps) or min(self.timesteps) < 0:
                raise ConfigError(f"scoped: timesteps must be distinct non-negative integers; got {self.timesteps}.")
            self.levels = len(self.timesteps)
        if self.levels < 1 or len(self.time_range) != 2 or not 0 <= float(self.time_range[0]) < float(self.time_range[1]) <= 1:
            raise ConfigError(f"scoped: needs levels >= 1 and time_range [first, last] with 0 <= first < last <= 1; "
                              f"got {self.levels}, {self.time_range}.")
        if int(self.probes) < 1:
            raise ConfigError(f"scoped: probes must be >= 1; got {self.probes}.")
        if self.probe not in PROBE_KINDS:
            raise ConfigError(f"scoped: probe must be one of {', '.join(PROBE_KINDS)}; got '{self.probe}'.")
        if self.jvp not in JVP_MODES:
            raise ConfigError(f"scoped: jvp must be one of {', '.join(JVP_MODES)}; got '{self.jvp}'.")
        self.time_range = [float(v) for v in self.time_range]
        self.probes = int(self.probes)

    @property
    def feature_names(self) -> list[str]:
        return [f"{part}@{i}" for i in range(self.levels) for part in ("score_norm2", "score_trace")]

    def timesteps_for(self, num_timesteps: int) -> torch.Tensor:
        """The integer timesteps the features are taken at, int64 [levels]."""
        if self.timesteps is not None:
            if max(self.timesteps) >= num_timesteps:
                raise ConfigError(f"scoped: timesteps {self.timesteps} exceed the backbone's {num_timesteps} steps.")
            return torch.tensor(self.timesteps, dtype=torch.int64)
        return kept_timesteps(num_timesteps, self.levels, self.time_range)

    def network_evaluations_per_image(self, num_timesteps: int) -> int:
        """Network passes: one per level and probe, each a forward with its JVP or vJP (forward_equivalents prices them)."""
        return self.levels * self.probes

    def forward_equivalents_per_image(self, num_timesteps: int) -> float:
        return self.levels * self.probes * PASS_COST[self.jvp]

    def rows_per_call(self, batch: int) -> int:
        return batch * self.levels * self.probes

    def features_and_maps(self, backbone: Backbone, images: torch.Tensor, seeds: torch.Tensor) -> tuple[torch.Tensor, None]:
        B, L, P, shape = images.shape[0], self.levels, self.probes, images.shape[1:]
        ts = self.timesteps_for(backbone.num_timesteps).to(images.device)
        draws = per_image_noise(seeds, shape, 1 + L * P, images.dtype).to(images.device)  # ε, then the probes
        noise, probes = draws[:, :1], probes_from(draws[:, 1:], self.probe).reshape(B * L, P, *shape)
        ab = backbone.alphas_cumprod[ts].to(images.dtype).view(1, L, 1, 1, 1)
        x_t = (ab.sqrt() * images[:, None] + (1 - ab).sqrt() * noise).flatten(0, 1)  # [B·L, C, H, W], level-minor
        t_rows = ts.repeat(B)
        # a piece of rows per network call (its graph freed before the next), so memory does not grow with the batch
        step = max(1, int(getattr(backbone, "n", len(x_t))) // P)
        network = getattr(backbone, "backbone", backbone)  # the module behind FixedBatchEps
        with plain_attention(network) if self.jvp == "forward" else contextlib.nullcontext():
            parts = [eps_and_quadratic_forms(backbone.predict_eps, x_t[i : i + step], t_rows[i : i + step], probes[i : i + step], self.jvp)
                     for i in range(0, len(x_t), step)]
        eps, forms = torch.cat([e for e, _ in parts]), torch.cat([f for _, f in parts])
        sigma = (1 - backbone.alphas_cumprod[t_rows].to(torch.float64)).sqrt()
        norm2 = eps.to(torch.float64).flatten(1).pow(2).sum(1) / sigma**2  # ‖s‖² = ‖ε̂‖²/σ²
        trace = -forms.mean(1) / sigma  # tr ∂s/∂x = −tr(∂ε̂/∂x)/σ
        return torch.stack([norm2, trace], dim=1).view(B, L * 2), None
