"""The tf.data pipelines: random shifts, the training order, evaluation batches."""
import numpy as np
import tensorflow as tf

from capsrun.data.pipeline import eval_dataset, random_shift, train_dataset
from capsrun.data.splits import load_splits
from tests.conftest import compose_config


def translated(images, dy, dx):
    """images [N, H, W, C] moved down by dy and right by dx pixels (negative: up, left), zero filled."""
    height, width = images.shape[1:3]
    moved = np.zeros_like(images)
    moved[:, max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        images[:, max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)]
    return moved


def test_random_shift_translates_with_zero_padding():
    image = np.zeros((1, 28, 28, 1), np.uint8)
    image[0, 10:14, 12:15, 0] = 200
    shifted = random_shift(tf.constant(np.repeat(image, 64, axis=0)), 2, tf.constant([1, 2], tf.int64)).numpy()
    offsets = set()
    for out in shifted:
        rows, cols = np.nonzero(out[..., 0])
        assert out.sum() == image.sum()
        offsets.add((rows.min() - 10, cols.min() - 12))
    assert all(-2 <= dy <= 2 and -2 <= dx <= 2 for dy, dx in offsets) and len(offsets) > 5
    # Every output is exactly one zero-padded translation of ITS OWN input (distinct images without a
    # zero pixel, so the padding shows and only one offset fits; H != W so rows and columns cannot
    # swap), and over 2000 images every offset in -s..+s occurs in both directions, none outside.
    images = np.random.default_rng(0).integers(1, 256, (2000, 12, 10, 1), dtype=np.uint8)
    for max_shift in (2, 1):
        shifted = random_shift(tf.constant(images), max_shift, tf.constant([3, 4], tf.int64)).numpy()
        candidates = range(-max_shift - 1, max_shift + 2)
        fits = {(dy, dx): np.all(shifted == translated(images, dy, dx), axis=(1, 2, 3))
                for dy in candidates for dx in candidates}
        np.testing.assert_array_equal(sum(fits.values()), 1)
        occurring = {offset for offset, fit in fits.items() if fit.any()}
        allowed = {(dy, dx) for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1)}
        assert occurring == allowed, \
            f"max_shift={max_shift}: missing {sorted(allowed - occurring)}, outside {sorted(occurring - allowed)}"


def test_training_order_depends_on_seed_and_epoch_only_and_skip_resumes_it():
    splits = load_splits(compose_config("data.train_size=256").data, 0)
    first = [labels.numpy() for _, labels in train_dataset(splits.train, 32, 0, epoch=1, shift_pixels=2)]
    again = [labels.numpy() for _, labels in train_dataset(splits.train, 32, 0, epoch=1, shift_pixels=2)]
    other = [labels.numpy() for _, labels in train_dataset(splits.train, 32, 0, epoch=2, shift_pixels=2)]
    skipped = [labels.numpy() for _, labels in train_dataset(splits.train, 32, 0, 1, 2, skip_batches=3)]
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
    assert not np.array_equal(np.concatenate(first), np.concatenate(other))
    np.testing.assert_array_equal(np.concatenate(first[3:]), np.concatenate(skipped))
    assert len(first) == 8


def test_eval_dataset_keeps_every_example_in_order():
    splits = load_splits(compose_config().data, 0)
    batches = list(eval_dataset(splits.test, 50))
    assert batches[0][0].dtype == tf.uint8
    np.testing.assert_array_equal(np.concatenate([labels.numpy() for _, labels in batches]), splits.test.labels)
