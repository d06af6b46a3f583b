"""Train / validation / test splits of a data source (numpy arrays, uint8 images).

Shapes: N images, H, W, C image, T objects per image (MultiMNIST: 2).
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np

from capsrun.data.affnist_files import SIDE as AFFNIST_SIDE
from capsrun.data.affnist_files import load_affnist
from capsrun.data.generated import affine_parameters, affine_transform, multimnist, pad_to_canvas
from capsrun.data.smallnorb_files import familiar
from capsrun.data.sources import load_source
from capsrun.errors import CapsrunError


@dataclass(frozen=True)
class Preprocessing:
    """How the pipeline turns a split's uint8 images into model inputs, when they are not simply
    scaled to [0, 1] (data=smallnorb, after the EM paper's code): random crop_size x crop_size crops
    with random brightness and contrast for training, a fixed crop for evaluation, then per-image
    standardisation (zero mean, unit variance). The model sees float32 [B, crop, crop, C].

    crop_size: side of the crops (None: the whole image); brightness_delta: training brightness
    offset uniform in [-delta, delta] on the 0..255 scale; contrast_range: (lower, upper) of the
    training contrast factor, or None; standardize: per-image standardisation (else [0, 1] scaling);
    view: the evaluation crop, 0 = centre, 1 .. 12 the others of the 13 test crops
    (capsrun.data.pipeline.crop_offsets)."""

    crop_size: Optional[int] = None
    brightness_delta: float = 0.0
    contrast_range: Optional[Tuple[float, float]] = None
    standardize: bool = False
    view: int = 0


def preprocessing_of(data_cfg: Any) -> Optional[Preprocessing]:
    """The Preprocessing of data.crop_size, data.brightness_delta, data.contrast_range and
    data.standardize, or None when none is set (the plain [0, 1] path)."""
    contrast = tuple(float(value) for value in data_cfg.contrast_range) if data_cfg.contrast_range else None
    prep = Preprocessing(data_cfg.crop_size, float(data_cfg.brightness_delta), contrast, bool(data_cfg.standardize))
    return None if prep == Preprocessing() else prep


@dataclass
class Split:
    """Images uint8 [N, H, W, C] and labels int32 [N] (or [N, K] for K digits per image, with
    `components` uint8 [N, K, H, W, C], each digit alone). smallNORB: `info` int32 [N, 4] (instance,
    elevation, azimuth code, lighting; capsrun.data.smallnorb_files) and `preprocessing`, which the
    pipeline applies (the model then sees [N, crop, crop, C] floats)."""

    images: np.ndarray
    labels: np.ndarray
    components: Optional[np.ndarray] = None
    info: Optional[np.ndarray] = None
    preprocessing: Optional[Preprocessing] = None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> "Split":
        """The examples `index` (int array or bool mask [N]) of this split, with the same preprocessing."""
        return Split(self.images[index], self.labels[index],
                     None if self.components is None else self.components[index],
                     None if self.info is None else self.info[index], self.preprocessing)


@dataclass
class DataSplits:
    """The splits of a run. `extra_tests` holds further test sets (data=affnist: {"affine": ...}, the
    generated set, or {"affnist": ...}, the real one of data.affine.path; data=smallnorb with a
    data.viewpoint_split: {"novel": ...}, the test images of the novel viewpoints)."""

    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: Tuple[str, ...] = ()
    extra_tests: Dict[str, Split] = field(default_factory=dict)

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """The model's input [H, W, C]: the stored images, or their crops (Split.preprocessing)."""
        height, width, channels = self.train.images.shape[1:]
        prep = self.train.preprocessing
        if prep is not None and prep.crop_size:
            return (prep.crop_size, prep.crop_size, channels)
        return (height, width, channels)

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
    if data_cfg.name == "smallnorb":
        return smallnorb_splits(data_cfg, seed, raw, extra_tests)
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


def smallnorb_splits(data_cfg: Any, seed: int, raw: Any, extra_tests: bool = True) -> DataSplits:
    """data=smallnorb's splits (each with its info [N, 4] and the Preprocessing of the data config).

    `data.viewpoint_split` none: training / validation from the 24,300 training pairs, the test split
    the 24,300 test pairs. azimuth / elevation (the EM paper's novel-viewpoint experiment): only the
    training pairs of the familiar viewpoints are used for training and validation; the test split is
    the test pairs of the familiar viewpoints and `extra_tests["novel"]` those of the novel ones
    (capsrun.data.smallnorb_files.FAMILIAR_AZIMUTHS / FAMILIAR_ELEVATIONS). Validation is carved
    from the training pairs by a permutation fixed by `seed`: the same 25 toy instances as the
    training split (other lightings and viewpoints), so it is easier than the test split, whose
    instances are unseen. `data.train_size` truncates training, `data.test_size` each test set."""
    prep = preprocessing_of(data_cfg)
    train_all = Split(raw.x_train, raw.y_train, info=raw.info_train, preprocessing=prep)
    test_all = Split(raw.x_test, raw.y_test, info=raw.info_test, preprocessing=prep)
    split = data_cfg.viewpoint_split
    train_all = train_all.take(familiar(train_all.info, split))
    if data_cfg.val_size >= len(train_all):
        raise CapsrunError(f"data.val_size={data_cfg.val_size} leaves no training data ({len(train_all)} training "
                           f"images{'' if split == 'none' else ' of the familiar viewpoints'})")
    order = np.random.default_rng(seed).permutation(len(train_all))
    val_idx, train_idx = order[: data_cfg.val_size], order[data_cfg.val_size:]
    if data_cfg.train_size is not None:
        train_idx = train_idx[: data_cfg.train_size]

    def first(part: Split) -> Split:
        return part if data_cfg.test_size is None else part.take(np.arange(min(data_cfg.test_size, len(part))))

    mask = familiar(test_all.info, split)
    extra = {} if split == "none" or not extra_tests else {"novel": first(test_all.take(~mask))}
    return DataSplits(train=train_all.take(train_idx), val=train_all.take(val_idx), test=first(test_all.take(mask)),
                      num_classes=len(raw.class_names), class_names=raw.class_names, extra_tests=extra)
