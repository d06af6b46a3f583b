"""Bundled MNIST, checksums, other sources, splits and the tf.data pipelines."""
import gzip
import shutil

import numpy as np
import pytest
import tensorflow as tf

from capsrun.data.pipeline import eval_dataset, random_shift, train_dataset
from capsrun.data.sources import BUNDLED_MNIST, read_idx
from capsrun.data.splits import load_splits
from capsrun.errors import CapsrunError
from tests.conftest import compose_config


def test_bundled_mnist_has_all_70000_digits_and_passes_checksums():
    cfg = compose_config(experiment=None)
    splits = load_splits(cfg.data, seed=0)
    assert len(splits.train) == 55_000 and len(splits.val) == 5_000 and len(splits.test) == 10_000
    assert splits.image_shape == (28, 28, 1) and splits.num_classes == 10
    assert splits.train.images.dtype == np.uint8
    assert sorted(np.unique(splits.test.labels)) == list(range(10))


def test_validation_split_is_fixed_by_seed_and_disjoint_from_training():
    cfg = compose_config("data.train_size=2000", "data.val_size=500")
    a, b, c = (load_splits(cfg.data, seed) for seed in (0, 0, 1))
    np.testing.assert_array_equal(a.val.images, b.val.images)
    assert not np.array_equal(a.val.images, c.val.images)
    train_rows = {row.tobytes() for row in a.train.images}
    assert len(a.train) == 2000 and not any(row.tobytes() in train_rows for row in a.val.images[:200])


def _copy_mnist(tmp_path):
    folder = tmp_path / "mnist"
    shutil.copytree(BUNDLED_MNIST, folder)
    return folder


def test_corrupt_file_is_named_in_the_error(tmp_path):
    folder = _copy_mnist(tmp_path)
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(CapsrunError, match="t10k-labels-idx1-ubyte.gz is corrupt"):
        load_splits(compose_config(f"data.path={folder}").data, 0)


def test_truncated_file_is_named_in_the_error(tmp_path):
    folder = _copy_mnist(tmp_path)
    (folder / "SHA256SUMS").unlink()
    images = folder / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())
    images.unlink()
    (folder / "t10k-images-idx3-ubyte").write_bytes(raw[:-1000])
    with pytest.raises(CapsrunError, match="t10k-images-idx3-ubyte is truncated"):
        load_splits(compose_config(f"data.path={folder}").data, 0)
    broken_gzip = tmp_path / "broken.gz"
    broken_gzip.write_bytes(gzip.compress(raw)[:5000])
    with pytest.raises(CapsrunError, match="cannot read data file .*broken.gz"):
        read_idx(broken_gzip)


def test_npz_source_is_loaded(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "digits.npz"
    np.savez(path, x_train=rng.integers(0, 255, (300, 28, 28), dtype=np.uint8), y_train=rng.integers(0, 10, 300),
             x_test=rng.integers(0, 255, (50, 28, 28), dtype=np.uint8), y_test=rng.integers(0, 10, 50))
    splits = load_splits(compose_config(f"data.path={path}", "data.val_size=100", "data.train_size=null").data, 0)
    assert len(splits.train) == 200 and len(splits.val) == 100 and len(splits.test) == 50
    assert splits.image_shape == (28, 28, 1)


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
