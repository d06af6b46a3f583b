"""Typed schemas of every config: `capsrun train` (Config, registered as `capsrun_schema`) and
each other command (EvalConfig, ... registered as `<command>_schema`).

The YAML files in `conf/` fill these schemas in; OmegaConf rejects wrong types and unknown keys.
Ranges and combinations are checked by `capsrun.config.validation`. Comments on every key live in
the YAML files (`capsrun <command> --help` prints them).
"""
from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING

STRATEGIES = ("auto", "mirrored", "one_device", "multi_worker")
JIT_CHOICES = ("auto", "true", "false")
PRECISIONS = ("none", "mixed_float16", "mixed_bfloat16")


DATA_NAMES = ("mnist", "fashion_mnist", "cifar10", "folder", "npz", "affnist", "multimnist", "smallnorb")
VIEWPOINT_SPLITS = ("none", "azimuth", "elevation")
"""data.viewpoint_split (capsrun.data.smallnorb_files.VIEWPOINT_SPLITS; config may not import data)."""


@dataclass
class AffineConfig:
    seed: int = 0
    rotation_degrees: float = 20.0
    shear: float = 0.2
    scale_min: float = 0.8
    scale_max: float = 1.2
    translation: float = 6.0
    path: Optional[str] = None


@dataclass
class MultiMnistConfig:
    pairs_per_digit: int = 1
    canvas_size: int = 36
    max_shift: int = 4
    test_seed: int = 0


@dataclass
class DataConfig:
    name: str = "mnist"
    path: Optional[str] = None
    val_size: int = 5000
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    shift_pixels: int = 2
    image_size: Optional[List[int]] = None
    channels: Optional[int] = None
    test_fraction: float = 0.1
    canvas_size: Optional[int] = None
    stereo: bool = False
    viewpoint_split: str = "none"
    crop_size: Optional[int] = None
    brightness_delta: float = 0.0
    contrast_range: Optional[List[float]] = None
    standardize: bool = False
    test_crops: int = 1
    affine: AffineConfig = field(default_factory=AffineConfig)
    multimnist: MultiMnistConfig = field(default_factory=MultiMnistConfig)


@dataclass
class ModelConfig:
    name: str = "capsnet"
    conv1_filters: int = 256
    conv1_kernel: int = 9
    primary_maps: int = 32
    primary_dim: int = 8
    primary_kernel: int = 9
    primary_strides: int = 2
    digit_dim: int = 16
    routing: str = "dynamic"
    routing_squash: str = "paper"
    routing_iterations: int = 3
    initializer: str = "keras"
    digit_bias: bool = False
    leaky_routing: bool = False
    primary_scale: float = 1.0
    max_min_renormalize: bool = True
    decoder_units: List[int] = field(default_factory=lambda: [512, 1024])
    cnn_channels: List[int] = field(default_factory=lambda: [256, 256, 128])
    cnn_kernel: int = 5
    fc_units: List[int] = field(default_factory=lambda: [328, 192])
    dropout: float = 0.5
    efficient_conv_filters: List[int] = field(default_factory=lambda: [32, 64, 64, 128])
    efficient_conv_kernels: List[int] = field(default_factory=lambda: [5, 3, 3, 3])
    efficient_conv_strides: List[int] = field(default_factory=lambda: [1, 1, 1, 2])
    em_a: int = 32
    em_b: int = 32
    em_c: int = 32
    em_d: int = 32
    em_final_lambda: float = 0.01
    em_lambda_decay: float = 0.95
    em_coordinate_addition: bool = True
    em_epsilon: float = 1e-9
    em_conv1_padding: str = "valid"
    em_routing_chunk: int = 4


@dataclass
class LossConfig:
    m_plus: float = 0.9
    m_minus: float = 0.1
    lambda_: float = 0.5
    recon_weight: float = 0.0005
    margin_scale: float = 1.0
    margin_reduction: str = "sum"
    spread_m_min: float = 0.2
    spread_m_max: float = 0.99
    spread_schedule: str = "sigmoid"
    spread_steps: float = 50000.0


@dataclass
class OptimizerConfig:
    name: str = "adam"
    lr: float = 0.001
    decay_rate: float = 0.96
    decay_steps: Optional[int] = None
    staircase: bool = True
    min_lr: float = 0.0
    epsilon: float = 1e-7


@dataclass
class TrainerConfig:
    strategy: str = "auto"
    devices: Optional[List[str]] = None
    cpu_devices: Optional[int] = None
    jit_compile: str = "auto"
    mixed_precision: str = "none"
    deterministic: bool = False
    max_grad_norm: Optional[float] = None
    log_every_steps: int = 20
    steps_per_loop: int = 1
    checkpoint_every_steps: Optional[int] = None
    val_every_steps: Optional[int] = None
    target_val_accuracy: Optional[float] = None
    stop_at_val_accuracy: Optional[float] = None
    keep_checkpoints: int = 3
    eval_batch_size: Optional[int] = None
    num_recon_images: int = 8
    progress_bar: bool = True
    profile_steps: Any = None


@dataclass
class Config:
    seed: int = 0
    epochs: int = 10
    batch_size: int = 128
    resume: Optional[str] = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


# ------------------------------------------------------------------------------------------------
# Command schemas (conf/<command>.yaml)
# ------------------------------------------------------------------------------------------------

@dataclass
class InspectData:
    """`data.test_size` of the inspection commands: null (the run's), `all`, or N."""

    test_size: Any = None


@dataclass
class EvalAffine:
    """`data.affine.path` of `capsrun eval`: null (the run's own) or the real affNIST test files."""

    path: Optional[str] = None


@dataclass
class EvalData(InspectData):
    """`data.*` of `capsrun eval`: the test size and the affNIST files."""

    affine: EvalAffine = field(default_factory=EvalAffine)


@dataclass
class DeviceOverrides:
    """`trainer.*` settings of `capsrun eval` that replace the run's own (null keeps the run's)."""

    strategy: Optional[str] = None
    devices: Optional[List[str]] = None
    cpu_devices: Optional[int] = None
    jit_compile: Optional[str] = None


@dataclass
class EvalConfig:
    """Schema of conf/eval.yaml."""

    run_dir: Any = MISSING
    checkpoint: str = "best"
    batch_size: Optional[int] = None
    data: EvalData = field(default_factory=EvalData)
    trainer: DeviceOverrides = field(default_factory=DeviceOverrides)
    max_misclassified: int = 50
    dpi: int = 100
    tensorboard: bool = True
    ensemble_file: Optional[str] = None


@dataclass
class PerturbationConfig:
    range: float = 0.25
    step: float = 0.05


@dataclass
class VisualizeConfig:
    """Schema of conf/visualize.yaml."""

    run_dir: Any = MISSING
    checkpoint: str = "best"
    indices: Optional[List[int]] = None
    num_reconstructions: int = 20
    perturbation: PerturbationConfig = field(default_factory=PerturbationConfig)
    data: InspectData = field(default_factory=InspectData)
    output_dir: Optional[str] = None
    dpi: int = 100
    tensorboard: bool = True


@dataclass
class PredictConfig:
    """Schema of conf/predict.yaml."""

    run_dir: Any = MISSING
    checkpoint: str = "best"
    images: List[str] = MISSING
    invert: str = "auto"
    center: str = "auto"
    output: str = "table"
    batch_size: int = 64


@dataclass
class ExportConfig:
    """Schema of conf/export.yaml."""

    run_dir: Any = MISSING
    checkpoint: str = "best"
    format: str = "saved_model"
    output: Optional[str] = None
    overwrite: bool = False


@dataclass
class ReportConfig:
    """Schema of conf/report.yaml."""

    sweep_dir: Any = MISSING
    evaluate: bool = True
    checkpoint: str = "best"
    group_by: Optional[List[str]] = None
    time_targets: Optional[List[float]] = None
    output_dir: Optional[str] = None
    dpi: int = 100


@dataclass
class BenchConfig:
    """Schema of conf/bench.yaml."""

    batch_sizes: List[int] = field(default_factory=lambda: [32, 128])
    warmup_steps: int = 3
    timed_steps: int = 10
    include_eval: bool = True
    include_reference: bool = True
    include_conv_bound: bool = True
    include_digit_caps: bool = True
    reference_max_batch_size: Optional[int] = None
    pipeline_batches: int = 100
    routings: Optional[List[str]] = field(default_factory=lambda: [
        "dynamic", "uniform", "max_min", "self_attention", "inverted_dot_product"])
    routing_batch_size: int = 128
    loop_models: Optional[List[str]] = field(default_factory=lambda: ["capsnet", "efficient_capsnet"])
    loop_batch_sizes: List[int] = field(default_factory=lambda: [16, 128])
    steps_per_loop: List[int] = field(default_factory=lambda: [1, 10])
    loop_rounds: int = 3
    seed: int = 0
    output: str = "bench.json"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass
class LaunchConfig:
    """Schema of conf/launch.yaml (the settings before `--` of `capsrun launch`)."""

    workers: int = 2
    host: str = "localhost"


COMMAND_SCHEMAS = {
    "eval": EvalConfig, "visualize": VisualizeConfig, "predict": PredictConfig, "export": ExportConfig,
    "report": ReportConfig, "bench": BenchConfig, "launch": LaunchConfig,
}
"""Command name -> schema of conf/<name>.yaml (stored in Hydra's ConfigStore as `<name>_schema`)."""
