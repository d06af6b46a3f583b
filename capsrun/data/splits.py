"""Train / validation / test splits of a data source (numpy arrays, uint8 images).

Shapes: N images, H, W, C image, T objects per image (MultiMNIST: 2).
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np

from capsrun.data.affnist_files import SIDE as AFFNIST_SIDE
from capsrun.data.affnist_files import load_affnist
from capsrun.data.generated import affine_parameters, affine_transform, multimnist, pad_to_canvas
from capsrun.data.sources import load_source
from capsrun.errors import CapsrunError


@dataclass
class Split:
    """Images uint8 [N, H, W, C] and labels int32 [N] (or [N, K] for K digits per image, with
    `components` uint8 [N, K, H, W, C], each digit alone)."""

    images: np.ndarray
    labels: np.ndarray
    components: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DataSplits:
    """The splits of a run. `extra_tests` holds further test sets (data=affnist: {"affine": ...}, the
    generated set, or {"affnist": ...}, the real one of data.affine.path)."""

    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: Tuple[str, ...] = ()
    extra_tests: Dict[str, Split] = field(default_factory=dict)

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])

    @property
    def num_targets(self) -> int:
        """Digits per image: 1, or K for labels [N, K] (MultiMNIST: 2)."""
        return 1 if self.train.labels.ndim == 1 else self.train.labels.shape[1]


def affine_tests(data_cfg: Any, x_test: np.ndarray, y_test: np.ndarray) -> Dict[str, Split]:
    """The extra test set of data=affnist: {"affnist": the real affNIST test set} when
    `data.affine.path` is set, else {"affine": the test digits x_test uint8 [N, S, S, C] (already on
    the canvas) transformed by the affine maps of data.affine}."""
    if data_cfg.affine.path:
        if x_test.shape[1:3] != (AFFNIST_SIDE, AFFNIST_SIDE):
            raise CapsrunError(f"data.affine.path holds affNIST's {AFFNIST_SIDE}x{AFFNIST_SIDE} images but the run's "
                               f"images are {x_test.shape[1]}x{x_test.shape[2]}; train with data.canvas_size=40")
        return {"affnist": Split(*load_affnist(data_cfg.affine.path, data_cfg.test_size))}
    params = affine_parameters(len(x_test), data_cfg.affine)
    return {"affine": Split(affine_transform(x_test, params), y_test)}


def load_splits(data_cfg: Any, seed: int, extra_tests: bool = True) -> DataSplits:
    """Train / validation / test splits. Validation is carved from the training set by a
    permutation fixed by `seed`; `data.train_size` and `data.test_size` truncate for quick runs.
    `data.canvas_size` centres all images on a larger black canvas; `data.name=affnist` adds the
    affine-transformed test set as `extra_tests["affine"]`, or, with `data.affine.path`, the real
    affNIST test set read from there as `extra_tests["affnist"]` (its first `data.test_size`
    images). `extra_tests=False` (training, which never tests) builds no extra test set."""
    raw = load_source(data_cfg, seed)
    x_train, y_train, x_test, y_test = raw.x_train, raw.y_train, raw.x_test, raw.y_test
    if data_cfg.val_size >= len(x_train):
        raise CapsrunError(
            f"data.val_size={data_cfg.val_size} leaves no training data ({len(x_train)} training images)"
        )
    order = np.random.default_rng(seed).permutation(len(x_train))
    val_idx, train_idx = order[: data_cfg.val_size], order[data_cfg.val_size:]
    if data_cfg.train_size is not None:
        train_idx = train_idx[: data_cfg.train_size]
    test_count = len(x_test) if data_cfg.test_size is None else min(data_cfg.test_size, len(x_test))
    x_test, y_test = x_test[:test_count], y_test[:test_count]
    if data_cfg.canvas_size:
        if data_cfg.canvas_size < max(x_train.shape[1:3]):
            raise CapsrunError(f"data.canvas_size={data_cfg.canvas_size} is smaller than the images "
                               f"({x_train.shape[1]}x{x_train.shape[2]})")
        x_train, x_test = pad_to_canvas(x_train, data_cfg.canvas_size), pad_to_canvas(x_test, data_cfg.canvas_size)
    extra = {}
    if data_cfg.name == "affnist" and extra_tests:
        extra = affine_tests(data_cfg, x_test, y_test)
    if data_cfg.name == "multimnist":
        options = data_cfg.multimnist

        def overlay(images: np.ndarray, labels: np.ndarray, pair_seed: list) -> Split:
            return Split(*multimnist(images, labels, options.pairs_per_digit, pair_seed, options.canvas_size,
                                     options.max_shift))

        return DataSplits(
            train=overlay(x_train[train_idx], y_train[train_idx], [seed, 0]),
            val=overlay(x_train[val_idx], y_train[val_idx], [seed, 1]),
            test=overlay(x_test, y_test, [options.test_seed, 2]),
            num_classes=len(raw.class_names),
            class_names=raw.class_names,
        )
    return DataSplits(
        train=Split(x_train[train_idx], y_train[train_idx]),
        val=Split(x_train[val_idx], y_train[val_idx]),
        test=Split(x_test, y_test),
        num_classes=len(raw.class_names),
        class_names=raw.class_names,
        extra_tests=extra,
    )
