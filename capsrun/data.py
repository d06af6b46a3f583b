"""Train / validation / test splits of a data source, and the tf.data pipelines.

Arrays stay uint8 [N, H, W, C] from disk to the compiled step, which scales them to [0, 1]:
the pipeline moves a quarter of the bytes that float32 would need.
"""
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from capsrun.datasets import load_source
from capsrun.errors import CapsrunError
from capsrun.synthetic import affine_parameters, affine_transform, multimnist, pad_to_canvas


@dataclass
class Split:
    """Images uint8 [N, H, W, C] and labels int32 [N] (or [N, K] for K digits per image, with
    `components` uint8 [N, K, H, W, C], each digit alone)."""

    images: np.ndarray
    labels: np.ndarray
    components: np.ndarray = None

    def __len__(self):
        return len(self.labels)


@dataclass
class DataSplits:
    """The splits of a run. `extra_tests` holds further test sets (e.g. {"affine": ...})."""

    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: tuple = ()
    extra_tests: dict = field(default_factory=dict)

    @property
    def image_shape(self):
        return tuple(self.train.images.shape[1:])

    @property
    def num_targets(self):
        """Digits per image: 1, or K for labels [N, K] (MultiMNIST: 2)."""
        return 1 if self.train.labels.ndim == 1 else self.train.labels.shape[1]


def load_splits(data_cfg, seed):
    """Train / validation / test splits. Validation is carved from the training set by a
    permutation fixed by `seed`; `data.train_size` and `data.test_size` truncate for quick runs.
    `data.canvas_size` centres all images on a larger black canvas; `data.name=affnist` adds the
    affine-transformed test set as `extra_tests["affine"]`."""
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
    extra_tests = {}
    if data_cfg.name == "affnist":
        params = affine_parameters(len(x_test), data_cfg.affine)
        extra_tests["affine"] = Split(affine_transform(x_test, params), y_test)
    if data_cfg.name == "multimnist":
        options = data_cfg.multimnist

        def overlay(images, labels, pair_seed):
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
        extra_tests=extra_tests,
    )


def random_shift(images, max_shift, seed):
    """Shifts each image of a batch by up to `max_shift` pixels in each direction, zero padded.

    images: [B, H, W, C] (any dtype); seed: int [2] for stateless randomness. Returns [B, H, W, C].
    One pad and two batched gathers: no per-example Python or map.
    """
    height, width = images.shape[1], images.shape[2]
    padding = [[0, 0], [max_shift, max_shift], [max_shift, max_shift], [0, 0]]
    padded = tf.pad(images, padding)
    offsets = tf.random.stateless_uniform(
        [tf.shape(images)[0], 2], seed=seed, minval=0, maxval=2 * max_shift + 1, dtype=tf.int32
    )
    rows = offsets[:, :1] + tf.range(height)[None, :]
    cols = offsets[:, 1:] + tf.range(width)[None, :]
    shifted = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(shifted, cols, axis=2, batch_dims=1)


def _with_options(dataset):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return dataset.with_options(options)


def steps_per_epoch(split, batch_size):
    """Number of full global batches per training epoch (the last partial batch is dropped)."""
    return len(split) // batch_size


def _arrays(split, order=None):
    arrays = (split.images, split.labels) + (() if split.components is None else (split.components,))
    return arrays if order is None else tuple(array[order] for array in arrays)


def train_dataset(split, batch_size, seed, epoch, shift_pixels, skip_batches=0):
    """Batches (uint8 images [B, H, W, C], int32 labels [B][, components]) for one training epoch.

    The order and the shifts depend only on (seed, epoch), so a resumed run sees the same data;
    `skip_batches` skips the batches already trained on in a partly finished epoch.
    """
    order = np.random.default_rng([seed, epoch]).permutation(len(split))
    dataset = tf.data.Dataset.from_tensor_slices(_arrays(split, order))
    dataset = dataset.batch(batch_size, drop_remainder=True).enumerate().skip(skip_batches)

    def augment(index, batch):
        if shift_pixels > 0:
            batch_seed = tf.stack([tf.cast(seed, tf.int64), epoch * 1_000_003 + index])
            shifted = random_shift(batch[0], shift_pixels, batch_seed)
            batch = (shifted, *batch[1:])
        return batch

    dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return _with_options(dataset.prefetch(tf.data.AUTOTUNE))


def eval_dataset(split, batch_size):
    """Batches (uint8 images, int32 labels[, components]) in order, the last one possibly partial."""
    dataset = tf.data.Dataset.from_tensor_slices(_arrays(split)).batch(batch_size)
    return _with_options(dataset.prefetch(tf.data.AUTOTUNE))
