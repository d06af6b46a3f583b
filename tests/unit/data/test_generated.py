"""Generated data: the 40x40 canvas, the affine test set (section 5.2), MultiMNIST (section 6)."""
import numpy as np

from capsrun.data.generated import affine_parameters, affine_transform, pad_to_canvas
from capsrun.data.splits import load_splits
from tests.conftest import compose_config


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
