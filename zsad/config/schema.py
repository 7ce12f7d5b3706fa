"""Typed schemas of every config zsad reads; OmegaConf checks keys and types against them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class DataConfig:
    """One dataset split, preprocessed as in design.md §2."""

    name: str = "celeba"  # a key of zsad.data.DATASETS
    root: str = "data"  # where the files are (or will be downloaded to)
    split: str = "train"
    image_size: int = 32
    download: bool = False
    skip_corrupt: bool = False  # skip unreadable images with a warning count instead of failing
    max_images: Optional[int] = None  # first N images of the split (deterministic subset)
    num_workers: int = 4
    options: Dict[str, Any] = field(default_factory=dict)  # dataset-specific settings


@dataclass
class UNetConfig:
    """denoising-diffusion-pytorch `Unet` arguments."""

    dim: int = 64
    dim_mults: List[int] = field(default_factory=lambda: [1, 2, 4, 8])
    full_attn: Optional[List[bool]] = None
    attn_heads: int = 4
    attn_dim_head: int = 32
    dropout: float = 0.0


@dataclass
class DiffusionConfig:
    """The noise process; pinned explicitly because the library defaults are pred_v/sigmoid."""

    timesteps: int = 1000
    beta_schedule: str = "cosine"  # linear | cosine | sigmoid
    objective: str = "pred_noise"  # pred_noise | pred_v | pred_x0


@dataclass
class ModelConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)


@dataclass
class OptimConfig:
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_images: int = 100_000  # linear LR warm-up, counted in images seen
    grad_clip: float = 1.0  # max gradient norm; 0 disables


@dataclass
class EMAConfig:
    halflife_images: int = 500_000  # EDM-style: weight of old EMA halves every this many images
    rampup_ratio: Optional[float] = 0.05  # halflife <= ratio * images seen (early training); null = off


@dataclass
class TrainerConfig:
    """Lightning Trainer settings that a user may change."""

    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: Optional[str] = None  # null: bf16-mixed on GPU, 32-true on CPU
    max_steps: Optional[int] = None  # overrides total_images / batch_size when set
    log_every_n_steps: int = 50
    deterministic: bool = False
    enable_progress_bar: bool = True


@dataclass
class LoggerConfig:
    kind: str = "wandb"  # wandb | csv | none
    project: str = "zsad"
    entity: Optional[str] = None
    name: Optional[str] = None
    mode: str = "offline"  # offline | online; WANDB_MODE in the environment wins
    tags: List[str] = field(default_factory=list)


@dataclass
class CheckpointConfig:
    every_n_steps: int = 5000
    keep_periodic: bool = True  # keep step-numbered copies beside last.ckpt


@dataclass
class SamplesConfig:
    every_n_steps: int = 5000  # 0 disables the periodic grid
    num: int = 16
    sampling_steps: int = 100  # DDIM steps for the grid
    seed: int = 1234


@dataclass
class TrainConfig:
    """`zsad train`."""

    output_dir: str = "outputs/train"
    seed: int = 0
    resume: str = "auto"  # auto | never | path to a .ckpt
    batch_size: int = 128  # global batch over all processes
    total_images: int = 20_000_000  # training length in images seen
    record_sample_indices: bool = False  # write the dataset indices each process saw (debugging, tests)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
