"""The readers: bundled-MNIST checksums, IDX, npz, image folders, CIFAR-10 batches, missing downloads."""
import gzip
import pickle
import shutil

import numpy as np
import pytest

from capsrun.data.sources import BUNDLED_MNIST, read_idx
from capsrun.data.splits import load_splits
from capsrun.errors import CapsrunError
from tests.conftest import compose_config
from tests.helpers import make_image_tree


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


def test_image_folder_is_split_resized_and_kept_in_colour(tmp_path):
    make_image_tree(tmp_path / "tree")
    cfg = compose_config("data=folder", f"data.path={tmp_path / 'tree'}", "data.image_size=[20,24]", "data.val_size=10")
    splits = load_splits(cfg.data, seed=0)
    assert splits.image_shape == (20, 24, 3) and splits.num_classes == 3
    assert splits.class_names == ("class_0", "class_1", "class_2")
    assert len(splits.test) == 12 and len(splits.train) + len(splits.val) == 108
    assert sorted(np.bincount(splits.test.labels)) == [4, 4, 4]
    means = splits.train.images.reshape(len(splits.train), -1, 3).mean(axis=1)
    assert np.all(means.argmax(axis=1) == splits.train.labels)


def test_cifar10_batches_folder_is_read(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, 20))}
        with open(folder / name, "wb") as stream:
            pickle.dump(batch, stream)
    splits = load_splits(compose_config("data=cifar10", f"data.path={folder}", "data.val_size=10").data, 0)
    assert splits.image_shape == (32, 32, 3) and len(splits.test) == 20 and splits.class_names[0] == "airplane"
    with open(folder / "test_batch", "rb") as stream:
        first = pickle.load(stream)[b"data"][0]
    np.testing.assert_array_equal(splits.test.images[0, 0, :3, 0], first[:3])
    np.testing.assert_array_equal(splits.test.images[0, 0, 0], first[[0, 1024, 2048]])


def test_missing_download_explains_where_to_put_the_files(tmp_path):
    with pytest.raises(CapsrunError, match="capsrun never downloads"):
        load_splits(compose_config("data=fashion_mnist", f"data.path={tmp_path / 'nothing'}").data, 0)
