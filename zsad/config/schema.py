"""Typed schemas of every config zsad reads; OmegaConf checks keys and types against them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class DataConfig:
    """One dataset split, preprocessed as in docs/method.md §2."""

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


@dataclass
class BackboneConfig:
    """Which diffusion model to score with (see zsad.load_backbone)."""

    path: str = "???"
    format: str = "auto"  # auto | zsad | improved-diffusion
    config: Any = None  # improved-diffusion: preset name, JSON file, or the hyper-parameters as a mapping
    use_ema: bool = True  # zsad checkpoints: EMA weights (default) or online weights


@dataclass
class ScorerSpec:
    name: Optional[str] = None  # null: zsad's recommended detector (zsad.scoring.scorers.RECOMMENDED_SCORER)
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class GMMConfig:
    mode: str = "grid"  # grid (DiffPath's CV search) | fast (one fit)
    n_components: int = 50
    covariance_type: str = "full"
    grid_components: List[int] = field(default_factory=lambda: [50, 100])
    grid_covariances: List[str] = field(default_factory=lambda: ["full", "tied", "diag", "spherical"])
    cv_folds: int = 10
    max_iter: int = 200
    random_state: int = 0
    n_jobs: Optional[int] = None
    max_train: Optional[int] = None
    grid_max_samples: Optional[int] = 10_000


@dataclass
class KDEConfig:
    bandwidth: float = 5.0


@dataclass
class SoftMinKNNConfig:
    """UFCOD's detector (zsad.scoring.detector.SoftMinKNNDetector): every option of its EnergyOODDetector."""

    k: int = 10
    temperature: float = 0.5
    n_references: int = 100
    selection: str = "facility_location"  # facility_location | random | stratified
    random_state: Optional[int] = 42
    calibrate: bool = True
    mode: str = "zsad"  # zsad (exact soft minimum, leave-one-out calibration) | parity (UFCOD's code)


@dataclass
class ScopedKDEConfig:
    """SCOPED's detector (zsad.scoring.scoped_detector.ScopedKDEDetector); docs/method.md §3.6 says which option is the paper's."""

    statistic: str = "both"  # ratio | hyvarinen | both (the paper's reading: ratio, select 2 by stein; RULE.md chose this)
    select: Optional[int] = None  # levels kept (null or 0: all the scorer computed)
    selection: str = "stein"  # stein | spread (| all), how `select` levels are picked, on ID-train features only
    bandwidth: Any = "scott"  # a positive number, or scott | silverman
    standardize: bool = True


@dataclass
class DetectorConfig:
    gmm: GMMConfig = field(default_factory=GMMConfig)
    kde: KDEConfig = field(default_factory=KDEConfig)
    softmin_knn: SoftMinKNNConfig = field(default_factory=SoftMinKNNConfig)
    scoped_kde: ScopedKDEConfig = field(default_factory=ScopedKDEConfig)


@dataclass
class EvalTrainerConfig:
    """Lightning Trainer for feature extraction (predict); shards over devices."""

    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    enable_progress_bar: bool = True
    allow_tf32: bool = False  # TF32 convolutions/matmuls on Ampere+ GPUs: faster, ~1e-3 relative error in ε̂
    precision: str = "32-true"  # network precision for extraction: 32-true | bf16-mixed | 16-mixed (GPU)
    compile: Optional[str] = None  # torch.compile the network: default | reduce-overhead (CUDA graphs) | max-autotune
    fast_path: bool = True  # fused attention + channels-last convolutions (float rounding only; docs/speed.md)


@dataclass
class EvalConfig:
    """`zsad evaluate`: zero-shot benchmark over ID × OOD dataset pairs."""

    output_dir: str = "outputs/eval"
    seed: int = 0  # per-image noise seeds (docs/method.md §2)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    scorers: List[ScorerSpec] = field(default_factory=lambda: [ScorerSpec()])
    datasets: Dict[str, DataConfig] = field(default_factory=dict)  # alias -> dataset (split set per use)
    id: List[str] = field(default_factory=list)  # aliases used as in-distribution
    ood: List[str] = field(default_factory=list)  # aliases used as OOD (every ID × OOD pair with ID != OOD)
    far_pairs: List[List[str]] = field(default_factory=list)  # [id, ood] pairs marked as far shifts
    fit_split: str = "train"
    eval_split: str = "test"
    max_fit_images: Optional[int] = None  # cap on ID-train images per dataset
    max_eval_images: Optional[int] = None  # cap on test images per dataset
    image_size: Optional[int] = None  # null: the backbone's
    batch_size: int = 128
    num_workers: int = 4
    network_batch: Optional[int] = None  # fixed network call size; null: the scorer's default
    cache_dir: str = "outputs/feature_cache"
    bootstrap: int = 1000  # resamples for the AUROC interval; 0 disables
    plots: bool = True
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    trainer: EvalTrainerConfig = field(default_factory=EvalTrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


@dataclass
class ScoreConfig:
    """`zsad score`: scores, p-values and overlays for a folder of images with a fitted detector."""

    images: str = "???"  # folder of images (searched recursively)
    detector: str = "???"  # a `zsad fit` folder, or a `zsad evaluate` prefix (…/detectors/<scorer>/<id>)
    output: Optional[str] = None  # CSV path or folder; default: outputs/score/<images folder name>/scores.csv
    backbone: BackboneConfig = field(default_factory=BackboneConfig)  # default: the weights the detector records
    false_alarm_rate: Optional[float] = None  # default: the rate the detector was fitted for
    batch_size: int = 16
    heatmaps: bool = False  # an overlay per image and a contact sheet (heatmaps/ beside the CSV)
    skip_corrupt: bool = False
    device: str = "auto"


@dataclass
class SettingSpec:
    label: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)
    scorer: Optional[str] = None  # another scorer in the same table (e.g. the baselines); the sweep's when unset
    group: Optional[str] = None  # the line this setting belongs to in the cost plot (a scorer and its cost knob)


@dataclass
class AblateConfig:
    """`zsad ablate`: one benchmark (an eval config), many settings of one scorer."""

    benchmark: str = "conf/eval/demo.yaml"  # the eval config whose datasets, pairs and detector are used
    overrides: List[str] = field(default_factory=list)  # key=value overrides of the benchmark
    scorer: Optional[str] = None  # the swept scorer; null: the paper's (zsad.scoring.scorers.PAPER_SCORER)
    settings: List[SettingSpec] = field(default_factory=list)  # explicit option sets (label + options)
    grid: Dict[str, List[Any]] = field(default_factory=dict)  # option -> values; every combination runs
    base_options: Dict[str, Any] = field(default_factory=dict)  # options shared by the grid's settings
    output_dir: str = "outputs/ablate"
    cache_dir: str = "outputs/feature_cache"
    bootstrap: int = 200  # resamples for the intervals of the mean AUROC; 0 disables
    reference: Optional[str] = None  # label of the row every other is compared with (Δ mean AUROC, paired bootstrap)
    seed: int = 0
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # one run with the table and the plots
