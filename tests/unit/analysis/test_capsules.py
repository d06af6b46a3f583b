"""Capsule perturbations: the grid of reconstructions of the winning capsule with one dimension moved."""
import numpy as np
import pytest


def test_perturbation_grid_regenerates_the_winning_capsule():
    import tensorflow as tf

    from capsrun.analysis.capsules import perturbation_grids
    from capsrun.commands.visualize import perturbation_deltas
    from tests.conftest import compose_config
    from tests.helpers import build

    deltas = perturbation_deltas(0.25, 0.05)
    assert len(deltas) == 11 and deltas[5] == 0.0 and deltas[0] == pytest.approx(-0.25)
    model = build(compose_config())
    images = np.random.default_rng(0).uniform(size=(2, 28, 28, 1)).astype(np.float32)
    grids, capsules, predicted = perturbation_grids(model, images, deltas)
    assert grids.shape == (2, 16, 11, 28, 28, 1)
    plain = model.reconstruct(tf.constant(capsules), tf.constant(predicted)).numpy()
    for dim in (0, 15):
        np.testing.assert_allclose(grids[:, dim, 5], plain, atol=1e-6)  # a zero shift changes nothing
    assert np.abs(grids[:, :, 0] - grids[:, :, -1]).max() > 1e-4


@pytest.mark.parametrize("decoder, verdict", [("copies", "better"), ("mean", "no better")])
def test_reconstruction_check_measures_against_the_mean_training_digit(decoder, verdict):
    """A decoder that copies its input beats the mean digit; one that draws the mean digit ties."""
    from types import SimpleNamespace

    import tensorflow as tf

    from capsrun.analysis.capsules import reconstruction_check
    from capsrun.models.base import RECONSTRUCTIONS

    rng = np.random.default_rng(0)
    train, test = (rng.integers(0, 256, size=(n, 28, 28, 1), dtype=np.uint8) for n in (50, 300))
    mean = tf.constant(train.mean(axis=0) / 255.0, tf.float32)

    def model(images, training=False):
        drawn = images if decoder == "copies" else tf.broadcast_to(mean, tf.shape(images))
        return {RECONSTRUCTIONS: drawn}

    from capsrun.data.splits import Split

    restored = SimpleNamespace(model=model, splits=SimpleNamespace(train=Split(train, np.zeros(50, np.int32)),
                                                                   test=Split(test, np.zeros(300, np.int32))))
    error, bar = reconstruction_check(restored, count=256)
    assert bar == pytest.approx(np.mean((test[:256] / 255.0 - train.mean(axis=0) / 255.0) ** 2), rel=1e-6)
    if verdict == "better":
        assert error == pytest.approx(0.0, abs=1e-7) and error < bar
    else:
        assert error == pytest.approx(bar, rel=1e-5)
