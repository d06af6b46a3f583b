"""Other data sets and input shapes: image folders, CIFAR-10 batches, the affine test set."""
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from capsrun.data.generated import affine_parameters, affine_transform, pad_to_canvas
from capsrun.data.splits import load_splits
from capsrun.errors import CapsrunError
from tests.conftest import compose_config, run_cli
from tests.helpers import build


def make_image_tree(root, classes=3, per_class=40, size=(37, 23)):
    """Class folders of RGB PNGs of an odd size; each class has its own dominant colour."""
    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 60, (*size, 3), dtype=np.uint8)
            pixels[..., label] += 150
            Image.fromarray(pixels, "RGB").save(folder / f"{index}.png")


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


def test_folder_data_trains_one_epoch_through_the_cli(tmp_path):
    make_image_tree(tmp_path / "tree")
    run_dir = tmp_path / "run"
    result = run_cli("train", "experiment=smoke", "data=folder", f"data.path={tmp_path / 'tree'}",
                     "data.image_size=[29,29]", "data.val_size=12", "data.train_size=null", "batch_size=16",
                     f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_completed"] == 1


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


@pytest.mark.parametrize("shape,primary,params", [
    ((28, 28, 1), 1152, 8_215_568),
    ((32, 32, 3), 2048, 62_464 + 5_308_672 + 2048 * 10 * 16 * 8 + 82_432 + 525_312 + 1024 * 3072 + 3072),
    ((40, 40, 1), 4608, 20_992 + 5_308_672 + 4608 * 10 * 16 * 8 + 82_432 + 525_312 + 1024 * 1600 + 1600),
])
def test_model_is_derived_from_the_input_shape(shape, primary, params):
    model = build(compose_config(experiment=None), shape, 10)
    assert model.digit_caps.kernel.shape == (primary, 10, 16, 8)
    assert model.count_params() == params
    assert model(np.zeros((2, *shape), np.float32))["reconstructions"].shape == (2, *shape)


def test_affine_test_set_is_deterministic_and_within_its_ranges():
    cfg = compose_config("data=affnist", "data.test_size=300").data
    first, second = load_splits(cfg, seed=0), load_splits(cfg, seed=7)
    affine = first.extra_tests["affine"]
    assert affine.images.shape == (300, 40, 40, 1) and first.test.images.shape == (300, 40, 40, 1)
    np.testing.assert_array_equal(affine.images, second.extra_tests["affine"].images)
    np.testing.assert_array_equal(affine.labels, first.test.labels)
    params = affine_parameters(300, cfg.affine)
    assert np.abs(params["rotation_degrees"]).max() <= 20 and np.abs(params["shear"]).max() <= 0.2
    assert 0.8 <= params["scale"].min() and params["scale"].max() <= 1.2
    assert np.abs(np.concatenate([params["translate_x"], params["translate_y"]])).max() <= 6
    assert np.abs(params["rotation_degrees"]).max() > 15 and not np.array_equal(affine.images, first.test.images)


def test_affine_transform_moves_rotates_and_scales_as_specified():
    digit = np.zeros((1, 28, 28, 1), np.uint8)
    digit[0, 10:18, 13:15] = 255
    canvas = pad_to_canvas(digit, 40)
    identity = {"rotation_degrees": [0.0], "shear": [0.0], "scale": [1.0], "translate_x": [3.0], "translate_y": [-2.0]}
    moved = affine_transform(canvas, identity)
    np.testing.assert_array_equal(moved[0, 14:22, 22:24], canvas[0, 16:24, 19:21])
    quarter = dict(identity, rotation_degrees=[90.0], translate_x=[0.0], translate_y=[0.0])
    rows, cols = np.nonzero(affine_transform(canvas, quarter)[0, ..., 0] > 128)
    assert cols.max() - cols.min() > rows.max() - rows.min()
    doubled = dict(identity, scale=[2.0], translate_x=[0.0], translate_y=[0.0])
    assert (affine_transform(canvas, doubled) > 128).sum() > 3 * (canvas > 128).sum()


def test_multimnist_is_deterministic_with_two_classes_and_heavy_overlap():
    from capsrun.data.generated import multimnist
    from capsrun.data.sources import BUNDLED_MNIST, read_idx
    from tests.helpers import bounding_box_overlap

    digits = read_idx(BUNDLED_MNIST / "t10k-images-idx3-ubyte.gz")[:400, :, :, None]
    labels = read_idx(BUNDLED_MNIST / "t10k-labels-idx1-ubyte.gz")[:400].astype(np.int32)
    images, pairs, components = multimnist(digits, labels, pairs_per_digit=2, seed=3)
    again = multimnist(digits, labels, pairs_per_digit=2, seed=3)
    assert images.shape == (800, 36, 36, 1) and pairs.shape == (800, 2) and components.shape == (800, 2, 36, 36, 1)
    np.testing.assert_array_equal(images, again[0])
    assert np.all(pairs[:, 0] != pairs[:, 1])
    np.testing.assert_array_equal(images, components.max(axis=1))
    for k in range(2):
        assert np.all(components[:, k].reshape(800, -1).sum(axis=1) > 0)
    np.testing.assert_array_equal(components[::2, 0].sum(axis=(1, 2, 3)), digits.sum(axis=(1, 2, 3)))
    overlap = bounding_box_overlap(components)
    assert 0.65 <= overlap.mean() <= 0.9 and (overlap > 0).mean() > 0.95


def test_two_digit_accuracy_needs_both_digits():
    import tensorflow as tf

    from capsrun.models.losses import class_targets
    from capsrun.training.steps import correct_predictions

    labels = tf.constant([[3, 7], [1, 2], [4, 0]])
    predicted = tf.constant([[3, 7], [1, 5], [0, 4]])
    np.testing.assert_array_equal(correct_predictions(predicted, labels).numpy(), [1, 0, 1])
    np.testing.assert_array_equal(class_targets(tf.constant([[3, 7]]), 10).numpy()[0], np.eye(10)[3] + np.eye(10)[7])


@pytest.mark.parametrize("overrides", [
    ["data=multimnist", "data.train_size=128", "data.val_size=32", "data.test_size=32"],
    ["model=baseline_cnn", "model.cnn_channels=[8,8,4]", "model.fc_units=[16,8]"],
])
def test_multimnist_capsnet_and_baseline_cnn_train_through_the_cli(tmp_path, overrides):
    run_dir = tmp_path / "run"
    result = run_cli("train", "experiment=smoke", *overrides, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and 0 <= metrics["val_accuracy"] <= 1
    history = metrics["history"][0]
    if "model=baseline_cnn" in overrides:
        assert "train_cross_entropy_loss" in history and "train_margin_loss" not in history
    else:
        assert history["train_reconstruction_loss"] > 0 and "train_margin_loss" in history
