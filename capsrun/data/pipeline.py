"""tf.data pipelines of the splits, and how a compiled step reads a batch.

Arrays stay uint8 [N, H, W, C] from disk to the compiled step, which scales them to [0, 1]:
the pipeline moves a quarter of the bytes that float32 would need. A batch is (uint8 images
[B, H, W, C], int32 labels [B] or [B, T][, uint8 components [B, T, H, W, C]]).
"""
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from capsrun.data.splits import Split


def to_unit_range(images: tf.Tensor) -> tf.Tensor:
    """uint8 images -> float32 in [0, 1]."""
    return tf.cast(images, tf.float32) / 255.0


def unpack(batch: tuple) -> Tuple[tf.Tensor, tf.Tensor, Optional[tf.Tensor]]:
    """(images float32 [b, H, W, C] in [0, 1], labels int32 [b] or [b, T], components or None)
    from a pipeline batch (uint8 images, labels[, uint8 components [b, T, H, W, C]])."""
    return to_unit_range(batch[0]), batch[1], batch[2] if len(batch) > 2 else None


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


def eval_dataset(split: Split, batch_size: int) -> tf.data.Dataset:
    """Batches (uint8 images, int32 labels[, components]) in order, the last one possibly partial."""
    dataset = tf.data.Dataset.from_tensor_slices(_arrays(split)).batch(batch_size)
    return _with_options(dataset.prefetch(tf.data.AUTOTUNE))
