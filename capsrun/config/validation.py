"""Range and combination checks of a composed `capsrun train` config (types and unknown keys are
already caught by the schema). Every failure is a CapsrunError with a one-line message, raised
before anything is written."""
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from capsrun.config.schema import DATA_NAMES, JIT_CHOICES, PRECISIONS, STRATEGIES, VIEWPOINT_SPLITS
from capsrun.errors import CapsrunError
from capsrun.models.registry import MODELS
from capsrun.models.routing import ROUTINGS


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise CapsrunError(message)


def validate(cfg: DictConfig, check_files: bool = True) -> None:
    """Raises CapsrunError with a one-line message for the first value that cannot work.
    `check_files=False` skips the existence of data.affine.path (for commands that build no extra
    test set)."""
    _check(cfg.epochs >= 1, f"epochs must be >= 1, got {cfg.epochs}")
    _check(cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    data, model, loss, opt, trainer = cfg.data, cfg.model, cfg.loss, cfg.optimizer, cfg.trainer
    _check(data.val_size >= 0, f"data.val_size must be >= 0, got {data.val_size}")
    _check(
        data.path is None or Path(data.path).expanduser().exists(),
        f"data.path {data.path} does not exist; point it at "
        + ("the folder of the six smallNORB files" if data.name == "smallnorb"
           else "an IDX folder or a .npz file, or set data.path=null"),
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
    _check_smallnorb(data)
    affine = data.affine
    _check(0 <= affine.rotation_degrees <= 180, "data.affine.rotation_degrees must be in [0, 180]")
    _check(affine.shear >= 0 and affine.translation >= 0, "data.affine.shear and translation must be >= 0")
    _check(0 < affine.scale_min <= affine.scale_max, "data.affine needs 0 < scale_min <= scale_max")
    if affine.path:
        _check(data.name == "affnist", f"data.affine.path (the real affNIST test set) applies to runs of "
                                       f"data=affnist, not data={data.name}: train with data=affnist or set "
                                       "data.affine.path=null")
        # affNIST's images are 40x40 (capsrun.data.affnist_files.SIDE; config may not import data)
        _check(data.canvas_size == 40, "data.affine.path holds affNIST's 40x40 images; keep data.canvas_size=40 "
                                       f"(got {data.canvas_size})")
        _check(not check_files or Path(affine.path).expanduser().exists(),
               f"data.affine.path {affine.path} does not exist; point it at affNIST's test.mat, a folder of its "
               "test batches 1.mat .. 32.mat, or test.mat.zip / test_batches.zip "
               "(https://www.cs.toronto.edu/~tijmen/affNIST/), or set data.affine.path=null")
    _check(model.name in MODELS, f"model.name must be one of {', '.join(MODELS)}; got '{model.name}'")
    _check(model.routing in ROUTINGS, f"model.routing must be one of {', '.join(ROUTINGS)}; got '{model.routing}'")
    _check(model.routing_squash in ("paper", "efficient"),
           f"model.routing_squash must be paper or efficient; got '{model.routing_squash}'")
    _check(model.routing_squash == "paper" or model.routing == "self_attention",
           "model.routing_squash=efficient needs model.routing=self_attention (the other routings keep their own)")
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
    efficient = (model.efficient_conv_filters, model.efficient_conv_kernels, model.efficient_conv_strides)
    _check(len(set(map(len, efficient))) == 1 and len(efficient[0]) >= 1,
           "model.efficient_conv_filters, efficient_conv_kernels and efficient_conv_strides need one entry per "
           f"convolution (the same number, >= 1); got {', '.join(str(len(values)) for values in efficient)}")
    _check(all(value >= 1 for values in efficient for value in values),
           "model.efficient_conv_filters, efficient_conv_kernels and efficient_conv_strides must all be >= 1")
    _check(model.name != "efficient_capsnet" or efficient[0][-1] % model.primary_dim == 0,
           f"model=efficient_capsnet groups the {efficient[0][-1]} channels of its last convolution into primary "
           f"capsules of model.primary_dim={model.primary_dim}; choose a divisor of {efficient[0][-1]}")
    _check(model.initializer in ("keras", "official"),
           f"model.initializer must be keras or official; got '{model.initializer}'")
    _check(model.primary_scale > 0, f"model.primary_scale must be > 0, got {model.primary_scale}")
    for key in ("digit_bias", "leaky_routing"):
        _check(not model[key] or (model.name == "capsnet" and model.routing == "dynamic"),
               f"model.{key}=true is an option of the official code's dynamic routing; it needs model=capsnet "
               f"and model.routing=dynamic (got model.name={model.name}, model.routing={model.routing})")
    _check(model.max_min_renormalize or (model.name == "capsnet" and model.routing == "max_min"),
           "model.max_min_renormalize=false is an option of max-min routing; it needs model=capsnet and "
           f"model.routing=max_min (got model.name={model.name}, model.routing={model.routing})")
    _check(model.initializer == "keras" and model.primary_scale == 1.0 or model.name == "capsnet",
           "model.initializer and model.primary_scale apply to model=capsnet; keep keras and 1.0 for "
           f"model={model.name}")
    for key in ("em_a", "em_b", "em_c", "em_d"):
        _check(model[key] >= 1, f"model.{key} must be >= 1, got {model[key]}")
    _check(model.em_final_lambda > 0, f"model.em_final_lambda must be > 0, got {model.em_final_lambda}")
    _check(0 <= model.em_lambda_decay < 1, f"model.em_lambda_decay must be in [0, 1), got {model.em_lambda_decay}")
    _check(model.em_epsilon > 0, f"model.em_epsilon must be > 0, got {model.em_epsilon}")
    _check(model.em_routing_chunk >= 0,
           f"model.em_routing_chunk must be >= 0 (0 = the whole batch at once), got {model.em_routing_chunk}")
    _check(model.em_conv1_padding in ("valid", "same"),
           f"model.em_conv1_padding must be valid or same; got '{model.em_conv1_padding}'")
    _check(model.name != "em_capsnet" or data.name != "multimnist",
           "model=em_capsnet classifies one object per image (spread loss); use model=capsnet for data=multimnist")
    _check(0 <= loss.spread_m_min <= loss.spread_m_max,
           f"loss needs 0 <= spread_m_min <= spread_m_max; got {loss.spread_m_min} and {loss.spread_m_max}")
    _check(loss.spread_schedule in ("sigmoid", "linear"),
           f"loss.spread_schedule must be sigmoid or linear; got '{loss.spread_schedule}'")
    _check(loss.spread_steps > 0, f"loss.spread_steps must be > 0, got {loss.spread_steps}")
    _check(loss.margin_scale > 0, f"loss.margin_scale must be > 0, got {loss.margin_scale}")
    _check(loss.margin_reduction in ("sum", "mean"),
           f"loss.margin_reduction must be sum or mean; got '{loss.margin_reduction}'")
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
    _check(opt.decay_steps is None or opt.decay_steps >= 1,
           f"optimizer.decay_steps must be null (one epoch) or >= 1, got {opt.decay_steps}")
    _check(0 <= opt.min_lr <= opt.lr, f"optimizer.min_lr must be in [0, optimizer.lr], got {opt.min_lr}")
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
    for key in ("log_every_steps", "steps_per_loop", "keep_checkpoints", "num_recon_images"):
        _check(trainer[key] >= 1, f"trainer.{key} must be >= 1, got {trainer[key]}")
    for key in ("checkpoint_every_steps", "eval_batch_size", "val_every_steps"):
        value = trainer[key]
        _check(value is None or value >= 1, f"trainer.{key} must be null or >= 1, got {value}")
    for key in ("target_val_accuracy", "stop_at_val_accuracy"):
        value = trainer[key]
        _check(value is None or 0 < value <= 1,
               f"trainer.{key} must be null or a fraction in (0, 1], e.g. 0.985 for 98.5%; got {value}")
        _check(value is None or data.val_size != 0,
               f"trainer.{key} needs validation data; set data.val_size > 0 (e.g. data.val_size=5000)")
    _check(_is_profile_steps(trainer.profile_steps),
           "trainer.profile_steps must be null, a number of steps N >= 1 (steps 2 to N + 1), or [first, last] "
           f"global steps with 1 <= first <= last; got {trainer.profile_steps}")


SMALLNORB_SIDE = 96
"""smallNORB's images are 96x96 (capsrun.data.smallnorb_files.SIDE; config may not import data)."""
SMALLNORB_KEYS = ("stereo", "viewpoint_split", "crop_size", "brightness_delta", "contrast_range", "standardize",
                  "test_crops")
SMALLNORB_DEFAULTS = (False, "none", None, 0.0, None, False, 1)


def _check_smallnorb(data: Any) -> None:
    """data=smallnorb's keys: a data.path, a square image_size of at most 96, crops that fit."""
    if data.name != "smallnorb":
        for key, default in zip(SMALLNORB_KEYS, SMALLNORB_DEFAULTS):
            value = OmegaConf.to_container(data[key]) if OmegaConf.is_list(data[key]) else data[key]
            _check(value == default, f"data.{key} applies to data=smallnorb, not data={data.name}; "
                                     f"remove the override (default {default})")
        return
    _check(bool(data.path), "data=smallnorb needs data.path=FOLDER holding the six smallNORB files "
                            "(https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/; see docs/experiments.md#smallnorb)")
    size = SMALLNORB_SIDE
    if data.image_size is not None:
        _check(data.image_size[0] == data.image_size[1] <= SMALLNORB_SIDE,
               f"data=smallnorb resizes its 96x96 images to a square of at most 96: data.image_size=[S, S] with "
               f"S <= 96 (e.g. [48, 48]), got {list(data.image_size)}")
        size = data.image_size[0]
    _check(data.viewpoint_split in VIEWPOINT_SPLITS,
           f"data.viewpoint_split must be one of {', '.join(VIEWPOINT_SPLITS)}; got '{data.viewpoint_split}'")
    _check(data.crop_size is None or 8 <= data.crop_size <= size,
           f"data.crop_size must be null or in [8, {size}] (the side of the resized images), got {data.crop_size}")
    _check(data.brightness_delta >= 0, f"data.brightness_delta must be >= 0, got {data.brightness_delta}")
    contrast = data.contrast_range
    _check(contrast is None or (len(contrast) == 2 and 0 <= contrast[0] <= contrast[1]),
           f"data.contrast_range must be null or [lower, upper] with 0 <= lower <= upper, got {contrast}")
    _check(data.test_crops in (1, 13), f"data.test_crops must be 1 (the centre crop) or 13, got {data.test_crops}")
    _check(data.test_crops == 1 or (data.crop_size is not None and data.crop_size + 6 <= size),
           f"data.test_crops=13 shifts the crops by up to 3 pixels: it needs data.crop_size <= {size - 6}")


def _is_profile_steps(value: Any) -> bool:
    """null, an int N >= 1, or a pair [first, last] of ints with 1 <= first <= last."""
    def is_int(item: Any) -> bool:
        return isinstance(item, int) and not isinstance(item, bool)

    if value is None:
        return True
    if OmegaConf.is_list(value) or isinstance(value, (list, tuple)):
        return len(value) == 2 and all(is_int(item) for item in value) and 1 <= value[0] <= value[1]
    return is_int(value) and value >= 1


def test_size_setting(value: Any, run_value: Optional[int]) -> Optional[int]:
    """The test-set size to use: `null` keeps the run's data.test_size, `all` means every test
    image, a number N the first N."""
    if value is None:
        return run_value
    if str(value).lower() == "all":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CapsrunError(f"data.test_size must be null (the run's), all, or a number >= 1; got '{value}'")
    return value
