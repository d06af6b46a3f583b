"""Typed configuration schema (registered with Hydra's ConfigStore), config location and validation.

The YAML files in `conf/` fill in this schema; OmegaConf rejects wrong types and unknown keys,
`validate` checks ranges and combinations. Both run before anything is written.
"""
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from capsrun.errors import CapsrunError

STRATEGIES = ("auto", "mirrored", "one_device", "multi_worker")
JIT_CHOICES = ("auto", "true", "false")
PRECISIONS = ("none", "mixed_float16", "mixed_bfloat16")


MODEL_NAMES = ("capsnet", "baseline_cnn")
DATA_NAMES = ("mnist", "fashion_mnist", "cifar10", "folder", "npz", "affnist", "multimnist")


@dataclass
class AffineConfig:
    seed: int = 0
    rotation_degrees: float = 20.0
    shear: float = 0.2
    scale_min: float = 0.8
    scale_max: float = 1.2
    translation: float = 6.0


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
    routing_iterations: int = 3
    decoder_units: List[int] = field(default_factory=lambda: [512, 1024])
    cnn_channels: List[int] = field(default_factory=lambda: [256, 256, 128])
    cnn_kernel: int = 5
    fc_units: List[int] = field(default_factory=lambda: [328, 192])
    dropout: float = 0.5


@dataclass
class LossConfig:
    m_plus: float = 0.9
    m_minus: float = 0.1
    lambda_: float = 0.5
    recon_weight: float = 0.0005


@dataclass
class OptimizerConfig:
    name: str = "adam"
    lr: float = 0.001
    decay_rate: float = 0.96
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
    checkpoint_every_steps: Optional[int] = None
    keep_checkpoints: int = 3
    eval_batch_size: Optional[int] = None
    num_recon_images: int = 8
    progress_bar: bool = True


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


GLOB_SAFE = str.maketrans({"[": "(", "]": ")", "*": "x", "?": "_"})


def glob_safe(name):
    """A folder name without glob characters: TensorFlow's checkpoint functions match paths as
    glob patterns, so a job folder named `model.decoder_units=[16,32]` would hide its checkpoints.
    Used by conf/config.yaml as ${glob_safe:${hydra.job.override_dirname}}."""
    return str(name).translate(GLOB_SAFE)


def register_configs():
    """Registers the schema as `capsrun_schema`, the first entry of conf/config.yaml's defaults,
    and the `glob_safe` resolver used in job folder names."""
    ConfigStore.instance().store(name="capsrun_schema", node=Config)
    if not OmegaConf.has_resolver("glob_safe"):
        OmegaConf.register_new_resolver("glob_safe", glob_safe)


def config_dir():
    """Absolute path of the `conf/` folder: the checkout's top-level `conf/` when run from a
    source tree (or an editable install), else the copy installed inside the package."""
    package = Path(__file__).resolve().parent
    for candidate in (package.parent / "conf", package / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise CapsrunError(f"capsrun's configs are missing (looked in {package.parent / 'conf'}); reinstall capsrun")


def flatten_dict(node, prefix=""):
    """{dotted key: leaf value} of a nested plain dict (e.g. OmegaConf.to_container's result)."""
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(flatten_dict(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def flat_keys(cfg, prefix=""):
    """All leaf keys of a config as dotted paths."""
    keys = []
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if OmegaConf.is_dict(value):
            keys.extend(flat_keys(value, path + "."))
        else:
            keys.append(path)
    return keys


def suggest_key(key, known_keys):
    """A one-line message for an unknown key, with the closest valid key when there is one."""
    close = difflib.get_close_matches(key, known_keys, n=1, cutoff=0.6)
    if not close:
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in known_keys if k.rsplit(".", 1)[-1] == leaf][:1]
    hint = f"; did you mean '{close[0]}'?" if close else "; run `capsrun train --cfg job` to list the keys"
    return f"unknown config key '{key}'{hint}"


def _check(condition, message):
    if not condition:
        raise CapsrunError(message)


def validate(cfg):
    """Raises CapsrunError with a one-line message for the first value that cannot work."""
    _check(cfg.epochs >= 1, f"epochs must be >= 1, got {cfg.epochs}")
    _check(cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    data, model, loss, opt, trainer = cfg.data, cfg.model, cfg.loss, cfg.optimizer, cfg.trainer
    _check(data.val_size >= 0, f"data.val_size must be >= 0, got {data.val_size}")
    _check(
        data.path is None or Path(data.path).expanduser().exists(),
        f"data.path {data.path} does not exist; point it at an IDX folder or a .npz file, or set data.path=null",
    )
    for key in ("train_size", "test_size"):
        value = data[key]
        _check(value is None or value >= 1, f"data.{key} must be null or >= 1, got {value}")
    _check(0 <= data.shift_pixels <= 8, f"data.shift_pixels must be in [0, 8], got {data.shift_pixels}")
    _check(data.name in DATA_NAMES, f"data.name must be one of {', '.join(DATA_NAMES)}; got '{data.name}'")
    _check(
        data.image_size is None or (len(data.image_size) == 2 and min(data.image_size) >= 8),
        f"data.image_size must be null or [height, width] of at least 8 pixels, got {data.image_size}",
    )
    _check(data.channels in (None, 1, 3), f"data.channels must be null, 1 or 3, got {data.channels}")
    _check(0 < data.test_fraction < 1, f"data.test_fraction must be in (0, 1), got {data.test_fraction}")
    _check(data.canvas_size is None or data.canvas_size >= 8, "data.canvas_size must be null or >= 8")
    affine = data.affine
    _check(0 <= affine.rotation_degrees <= 180, "data.affine.rotation_degrees must be in [0, 180]")
    _check(affine.shear >= 0 and affine.translation >= 0, "data.affine.shear and translation must be >= 0")
    _check(0 < affine.scale_min <= affine.scale_max, "data.affine needs 0 < scale_min <= scale_max")
    _check(model.name in MODEL_NAMES, f"model.name must be one of {', '.join(MODEL_NAMES)}; got '{model.name}'")
    _check(
        not (model.name == "baseline_cnn" and data.name == "multimnist"),
        "model=baseline_cnn classifies one object per image; use model=capsnet for data=multimnist",
    )
    _check(
        data.name != "multimnist" or data.shift_pixels == 0,
        "data=multimnist digits are already shifted when generated; set data.shift_pixels=0",
    )
    mm = data.multimnist
    _check(mm.pairs_per_digit >= 1 and mm.max_shift >= 0, "data.multimnist needs pairs_per_digit >= 1, max_shift >= 0")
    _check(mm.canvas_size >= 28 + 2 * mm.max_shift,
           f"data.multimnist.canvas_size must be >= 28 + 2 * max_shift ({28 + 2 * mm.max_shift})")
    _check(0 <= model.dropout < 1, f"model.dropout must be in [0, 1), got {model.dropout}")
    _check(all(v >= 1 for v in [*model.cnn_channels, *model.fc_units, model.cnn_kernel]),
           "model.cnn_channels, model.cnn_kernel and model.fc_units must all be >= 1")
    _check(
        model.routing_iterations >= 1,
        f"model.routing_iterations must be >= 1, got {model.routing_iterations}",
    )
    for key in ("conv1_filters", "conv1_kernel", "primary_maps", "primary_dim", "primary_kernel",
                "primary_strides", "digit_dim"):
        _check(model[key] >= 1, f"model.{key} must be >= 1, got {model[key]}")
    _check(all(units >= 1 for units in model.decoder_units), "model.decoder_units must all be >= 1")
    for key in ("m_plus", "m_minus"):
        _check(0.0 <= loss[key] <= 1.0, f"loss.{key} must be in [0, 1], got {loss[key]}")
    _check(
        loss.m_minus < loss.m_plus,
        f"loss.m_minus ({loss.m_minus}) must be smaller than loss.m_plus ({loss.m_plus})",
    )
    _check(loss.lambda_ >= 0, f"loss.lambda_ must be >= 0, got {loss.lambda_}")
    _check(loss.recon_weight >= 0, f"loss.recon_weight must be >= 0, got {loss.recon_weight}")
    _check(opt.name == "adam", f"optimizer.name must be 'adam', got '{opt.name}'")
    _check(opt.lr > 0, f"optimizer.lr must be > 0, got {opt.lr}")
    _check(0 < opt.decay_rate <= 1, f"optimizer.decay_rate must be in (0, 1], got {opt.decay_rate}")
    _check(opt.epsilon > 0, f"optimizer.epsilon must be > 0, got {opt.epsilon}")
    _check(
        trainer.strategy in STRATEGIES,
        f"trainer.strategy must be one of {', '.join(STRATEGIES)}; got '{trainer.strategy}'",
    )
    _check(
        str(trainer.jit_compile).lower() in JIT_CHOICES,
        f"trainer.jit_compile must be auto, true or false; got '{trainer.jit_compile}'",
    )
    _check(
        trainer.mixed_precision in PRECISIONS,
        f"trainer.mixed_precision must be one of {', '.join(PRECISIONS)}; got '{trainer.mixed_precision}'",
    )
    _check(
        trainer.cpu_devices is None or trainer.cpu_devices >= 1,
        f"trainer.cpu_devices must be null or >= 1, got {trainer.cpu_devices}",
    )
    _check(
        trainer.max_grad_norm is None or trainer.max_grad_norm > 0,
        f"trainer.max_grad_norm must be null or > 0, got {trainer.max_grad_norm}",
    )
    for key in ("log_every_steps", "keep_checkpoints", "num_recon_images"):
        _check(trainer[key] >= 1, f"trainer.{key} must be >= 1, got {trainer[key]}")
    for key in ("checkpoint_every_steps", "eval_batch_size"):
        value = trainer[key]
        _check(value is None or value >= 1, f"trainer.{key} must be null or >= 1, got {value}")
