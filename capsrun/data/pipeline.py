"""tf.data pipelines of the splits, and how a compiled step reads a batch.

Arrays stay uint8 [N, H, W, C] from disk to the compiled step, which scales them to [0, 1]:
the pipeline moves a quarter of the bytes that float32 would need. A batch is (uint8 images
[B, H, W, C], int32 labels [B] or [B, T][, uint8 components [B, T, H, W, C]]).

A split with a `Preprocessing` (data=smallnorb) is the exception: its batches carry float32 model
inputs [B, crop, crop, C] (cropped, augmented for training, per-image standardised), made here by
`preprocess_train` / `preprocess_eval`, and `unpack` passes float images on unchanged. The
decoder's reconstruction target is then that same standardised crop, as in the official code
(whose `recons_image` is the model input).
"""
from dataclasses import replace
from typing import List, Optional, Tuple

import numpy as np
import tensorflow as tf

from capsrun.data.splits import Preprocessing, Split

TEST_CROPS = (1, 13)
"""`data.test_crops`: the centre crop alone, or the 13 crops of the EM paper's code."""


def to_unit_range(images: tf.Tensor) -> tf.Tensor:
    """uint8 images -> float32 in [0, 1]."""
    return tf.cast(images, tf.float32) / 255.0


def unpack(batch: tuple) -> Tuple[tf.Tensor, tf.Tensor, Optional[tf.Tensor]]:
    """(images float32 [b, H, W, C] in [0, 1], labels int32 [b] or [b, T], components or None)
    from a pipeline batch (uint8 images, labels[, uint8 components [b, T, H, W, C]]). Float images
    (already preprocessed: Split.preprocessing) are passed on as they are."""
    images = batch[0]
    images = to_unit_range(images) if images.dtype == tf.uint8 else tf.cast(images, tf.float32)
    return images, batch[1], batch[2] if len(batch) > 2 else None


def crop_offsets(size: int, crop: int) -> List[Tuple[int, int]]:
    """(top, left) of the 13 test crops of a size x size image: the centre crop first, then the
    crops shifted diagonally by k = 1, 2, 3 pixels in each of the 4 directions (rows and columns
    each +k or -k). These are the glimpses of the EM paper's code (google-research
    capsule_em/norb/norb_record.py, `patching`: the centre 32x32 patch and extract_glimpse at
    offsets k * (+-1, +-1), k = 1, 2, 3, of the 48x48 image: 1 + 4 * 3 = 13 crops)."""
    centre = (size - crop) // 2
    offsets = [(centre, centre)]
    for k in (1, 2, 3):
        offsets += [(centre + k * dy, centre + k * dx) for dy, dx in ((1, 1), (1, -1), (-1, 1), (-1, -1))]
    if min(min(offset) for offset in offsets) < 0 or max(max(offset) for offset in offsets) + crop > size:
        raise ValueError(f"13 crops of {crop} need images of at least {crop + 6} pixels, got {size}")
    return offsets


def standardize(images: tf.Tensor) -> tf.Tensor:
    """Per-image standardisation of float32 [B, H, W, C] (tf.image.per_image_standardization: zero
    mean and unit variance over each image's pixels and channels, the standard deviation at least
    1 / sqrt(H * W * C) so that a flat image stays finite)."""
    return tf.image.per_image_standardization(images)


def _finish(images: tf.Tensor, prep: Preprocessing) -> tf.Tensor:
    return standardize(images) if prep.standardize else images / 255.0


def preprocess_eval(images: tf.Tensor, prep: Preprocessing) -> tf.Tensor:
    """uint8 [B, H, W, C] -> float32 model inputs [B, c, c, C]: crop `prep.view` of crop_offsets
    (0: the centre crop, the EM paper's test input), standardised (or scaled to [0, 1])."""
    images = tf.cast(images, tf.float32)
    if prep.crop_size:
        if prep.view:
            top, left = crop_offsets(images.shape[1], prep.crop_size)[prep.view]
        else:
            top, left = (images.shape[1] - prep.crop_size) // 2, (images.shape[2] - prep.crop_size) // 2
        images = images[:, top:top + prep.crop_size, left:left + prep.crop_size, :]
    return _finish(images, prep)


def crop_views(images: tf.Tensor, prep: Preprocessing) -> tf.Tensor:
    """The 13 test views of uint8 [B, H, W, C]: float32 [13, B, c, c, C], view 0 the centre crop.
    A model's class scores averaged over the first axis are the EM paper's 13-crop test score."""
    return tf.stack([preprocess_eval(images, replace(prep, view=view)) for view in range(13)])


def preprocess_train(images: tf.Tensor, prep: Preprocessing, seed: tf.Tensor) -> tf.Tensor:
    """uint8 [B, H, W, C] -> float32 training inputs [B, c, c, C], in the order of the EM paper's code
    (google-research capsule_em/norb/norb_record.py, distort=1) on the 0..255 scale: a random
    brightness offset uniform in [-brightness_delta, brightness_delta] (there: 63), a random
    contrast factor f uniform in contrast_range (there: [0.2, 1.8]; x -> (x - channel mean) * f +
    channel mean, as tf.image.adjust_contrast), a random crop (there: 32x32 of 48x48), then
    per-image standardisation. No clipping, as there: the standardisation removes the brightness
    offset entirely and, for one channel, the contrast factor too (for stereo pairs only the gap
    between the two cameras' means changes), so the crops are the augmentation that matters.
    seed: int [2], stateless: the same seed gives the same batch."""
    images = tf.cast(images, tf.float32)
    count = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    if prep.brightness_delta:
        delta = tf.random.stateless_uniform([count, 1, 1, 1], seeds[0], -prep.brightness_delta, prep.brightness_delta)
        images = images + delta
    if prep.contrast_range:
        lower, upper = prep.contrast_range
        factor = tf.random.stateless_uniform([count, 1, 1, 1], seeds[1], lower, upper)
        mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
        images = (images - mean) * factor + mean
    if prep.crop_size:
        crop = prep.crop_size
        height, width = images.shape[1], images.shape[2]
        top = tf.random.stateless_uniform([count, 1], seeds[2], 0, height - crop + 1, dtype=tf.int32)
        left = tf.random.stateless_uniform([count, 1], seeds[3], 0, width - crop + 1, dtype=tf.int32)
        images = tf.gather(images, top + tf.range(crop)[None, :], axis=1, batch_dims=1)
        images = tf.gather(images, left + tf.range(crop)[None, :], axis=2, batch_dims=1)
    return _finish(images, prep)


def random_shift(images: tf.Tensor, max_shift: int, seed: tf.Tensor) -> tf.Tensor:
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


def model_inputs(split: Split, index: Optional[np.ndarray] = None) -> tf.Tensor:
    """The examples `index` (all: None) of a split as the model sees them at test time: float32
    [n, H, W, C] in [0, 1], or, for a split with a Preprocessing, its evaluation crops [n, c, c, C]."""
    images = split.images if index is None else split.images[index]
    if split.preprocessing is not None:
        return preprocess_eval(tf.convert_to_tensor(images), split.preprocessing)
    return to_unit_range(images)


def _with_options(dataset: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return dataset.with_options(options)


def steps_per_epoch(split: Split, batch_size: int) -> int:
    """Number of full global batches per training epoch (the last partial batch is dropped)."""
    return len(split) // batch_size


def _arrays(split: Split, order: Optional[np.ndarray] = None) -> tuple:
    arrays = (split.images, split.labels) + (() if split.components is None else (split.components,))
    return arrays if order is None else tuple(array[order] for array in arrays)


def train_dataset(split: Split, batch_size: int, seed: int, epoch: int, shift_pixels: int,
                  skip_batches: int = 0) -> tf.data.Dataset:
    """Batches (uint8 images [B, H, W, C], int32 labels [B][, components]) for one training epoch.

    The order and the shifts depend only on (seed, epoch), so a resumed run sees the same data;
    `skip_batches` skips the batches already trained on in a partly finished epoch. A split with a
    Preprocessing yields float32 inputs [B, crop, crop, C] instead (preprocess_train).
    """
    order = np.random.default_rng([seed, epoch]).permutation(len(split))
    dataset = tf.data.Dataset.from_tensor_slices(_arrays(split, order))
    dataset = dataset.batch(batch_size, drop_remainder=True).enumerate().skip(skip_batches)

    def augment(index, batch):
        if shift_pixels > 0:
            batch_seed = tf.stack([tf.cast(seed, tf.int64), epoch * 1_000_003 + index])
            shifted = random_shift(batch[0], shift_pixels, batch_seed)
            batch = (shifted, *batch[1:])
        if split.preprocessing is not None:
            prep_seed = tf.stack([tf.cast(seed, tf.int64) + 7_919, epoch * 1_000_003 + index])
            batch = (preprocess_train(batch[0], split.preprocessing, prep_seed), *batch[1:])
        return batch

    dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return _with_options(dataset.prefetch(tf.data.AUTOTUNE))


def eval_dataset(split: Split, batch_size: int) -> tf.data.Dataset:
    """Batches (uint8 images, int32 labels[, components]) in order, the last one possibly partial;
    float32 inputs [b, crop, crop, C] for a split with a Preprocessing (preprocess_eval: its
    `view`, by default the centre crop)."""
    dataset = tf.data.Dataset.from_tensor_slices(_arrays(split)).batch(batch_size)
    if split.preprocessing is not None:
        prep = split.preprocessing
        dataset = dataset.map(lambda images, *rest: (preprocess_eval(images, prep), *rest),
                              num_parallel_calls=tf.data.AUTOTUNE)
    return _with_options(dataset.prefetch(tf.data.AUTOTUNE))
