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
