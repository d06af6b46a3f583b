"""Restoring a trained run from its folder for `capsrun eval`, `visualize`, `predict`, `export`
and `report`: the run's own config (the user never repeats the run's overrides), the model built
from it, and the weights of one of its checkpoints (`checkpoint=best|last|PATH`).

Every problem is a CapsrunError: one line, exit code 2.
"""
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import keras
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from capsrun.config.schema import Config
from capsrun.config.validation import test_size_setting, validate
from capsrun.data.splits import DataSplits, load_splits
from capsrun.errors import CapsrunError
from capsrun.logs import quiet_tensorflow
from capsrun.models.base import InputSpec
from capsrun.models.registry import build_model
from capsrun.training.checkpoints import check_model_weights, find_checkpoint, restore_checkpoint
from capsrun.training.run_folder import RUN_CONFIG, PathLike, checkpoint_step, load_run_config


@dataclass
class RestoredRun:
    """A trained run, ready to use.

    run_dir: the run folder. cfg: its config (with the command's test_size applied).
    model: the model with the checkpoint's weights (on the contract of capsrun.models.base).
    checkpoint: the restored checkpoint prefix; step: its global step.
    splits: the run's data splits (uint8 images [N, H, W, C], int32 labels [N], or [N, T] with
    `components` [N, T, H, W, C] for T objects per image), with any `extra_tests` (affnist: "affine", or
    "affnist" with data.affine.path).
    """

    run_dir: Path
    cfg: DictConfig
    model: Any
    checkpoint: str
    step: int
    splits: DataSplits

    @property
    def num_classes(self) -> int:
        return self.splits.num_classes


def load_config(run_dir: PathLike, test_size: Any = None, trainer: Optional[Mapping[str, Any]] = None,
                affine_path: Optional[str] = None, extra_tests: bool = True) -> DictConfig:
    """The run's config on capsrun's typed schema; `test_size` as in `test_size_setting`;
    `trainer` = {key: value} replaces the run's trainer settings (devices, strategy, ...);
    `affine_path` (not None) replaces the run's data.affine.path (the real affNIST test files).
    `extra_tests=False`: the caller builds no extra test set, so data.affine.path need not exist."""
    saved = load_run_config(run_dir)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), saved)
    except OmegaConfBaseException as error:
        detail = str(error).strip().splitlines()[0]
        raise CapsrunError(f"{Path(run_dir) / RUN_CONFIG} does not fit this capsrun version ({detail})") from None
    cfg.data.test_size = test_size_setting(test_size, cfg.data.test_size)
    if affine_path is not None:
        cfg.data.affine.path = str(Path(str(affine_path)).expanduser())
    key = None
    try:
        for key, value in (trainer or {}).items():
            cfg.trainer[key] = value
    except OmegaConfBaseException as error:
        raise CapsrunError(f"trainer.{key}: {str(error).strip().splitlines()[0]}") from None
    validate(cfg, check_files=extra_tests)
    return cfg


def restore_model(cfg: DictConfig, spec: InputSpec, checkpoint: str) -> Any:
    """The model built from `cfg.model`/`cfg.loss` for `spec`, with the weights of `checkpoint`
    (a prefix). Every model weight must find a saved value of the same shape, and the checkpoint
    may hold no model weight the config does not build; otherwise the config does not match the
    checkpoint (CapsrunError).
    """
    model = build_model(cfg.model, cfg.loss, spec)
    check_model_weights(checkpoint, model)
    restore_checkpoint(tf.train.Checkpoint(model=model), checkpoint, partial=True)
    return model


def restore_run(run_dir: PathLike, which: str = "best", test_size: Any = None,
                trainer: Optional[Mapping[str, Any]] = None, strategy: Optional[tf.distribute.Strategy] = None,
                multi_digit: bool = False, affine_path: Optional[str] = None,
                extra_tests: bool = True) -> RestoredRun:
    """Restores `run_dir` with its checkpoint `which` (best | last | PATH); `test_size`,
    `trainer` and `affine_path` as in `load_config`; `extra_tests=False` leaves out the extra
    test sets (affnist: the affine or affNIST set), for commands that use only the test split.

    The model is built under `strategy.scope()` when a strategy is given (for distributed
    evaluation), else on the default device. A run trained on several digits per image
    (MultiMNIST) is restored only for a caller that handles them (`multi_digit=True`: eval and
    visualize; predict and export take one digit per image). Returns a RestoredRun.
    """
    quiet_tensorflow(logging.ERROR)
    run_dir = Path(run_dir)
    cfg = load_config(run_dir, test_size, trainer, affine_path, extra_tests)
    path = find_checkpoint(str(run_dir), str(which))
    splits = load_splits(cfg.data, cfg.seed, extra_tests)
    if len(splits.test) == 0:
        raise CapsrunError(f"the test set of {run_dir} is empty; check data.path")
    if splits.num_targets != 1 and not multi_digit:
        raise CapsrunError(f"run {run_dir} was trained on images holding {splits.num_targets} digits; this "
                           "command takes one digit per image (capsrun eval and visualize handle such runs)")
    keras.mixed_precision.set_global_policy(
        "float32" if cfg.trainer.mixed_precision == "none" else cfg.trainer.mixed_precision
    )
    spec = InputSpec(splits.image_shape, splits.num_classes, splits.num_targets)
    if strategy is not None:
        with strategy.scope():
            model = restore_model(cfg, spec, path)
    else:
        model = restore_model(cfg, spec, path)
    return RestoredRun(run_dir, cfg, model, path, checkpoint_step(path), splits)
