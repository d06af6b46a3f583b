"""Dynamic routing with the official code's options (`convention=official`): a capsule bias
added to s_j before every squash, and leaky routing. NumPy forward, finite differences."""
import numpy as np
import pytest
import tensorflow as tf

from capsrun.models.routing.dynamic import BIAS_INIT
from tests.helpers import numpy_dynamic_routing
from tests.unit.models.routing_checks import (
    assert_gradients_match_finite_differences,
    make_layer,
    make_votes,
    randomize_weights,
)


@pytest.mark.parametrize("use_bias, leaky", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("iterations", [1, 3])
def test_official_options_match_numpy(use_bias, leaky, iterations):
    votes = make_votes(seed=4, scale=2.0)
    layer = make_layer("dynamic", iterations, use_bias=use_bias, leaky=leaky)
    if use_bias:
        randomize_weights(layer, seed=1, scale=0.5)
    parents, coupling = layer(tf.constant(votes))
    bias = layer.bias.numpy() if use_bias else None
    expected_parents, expected_coupling = numpy_dynamic_routing(votes, iterations, bias, leaky)
    np.testing.assert_allclose(parents.numpy(), expected_parents, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(coupling.numpy(), expected_coupling, rtol=1e-10, atol=1e-12)
    sums = coupling.numpy().sum(axis=1)
    if leaky:
        assert sums.max() <= 1 + 1e-12 and sums.min() < 1 - 1e-5  # the leak keeps a share
        if iterations == 1:
            np.testing.assert_allclose(coupling.numpy(), 1 / 5, rtol=1e-12)  # 1 / (J + 1), J = 4
    else:
        np.testing.assert_allclose(sums, 1.0, rtol=1e-12)


@pytest.mark.parametrize("use_bias, leaky", [(True, False), (False, True), (True, True)])
def test_official_options_gradients_match_finite_differences(use_bias, leaky):
    layer = make_layer("dynamic", 3, use_bias=use_bias, leaky=leaky)
    if use_bias:
        randomize_weights(layer, seed=2, scale=0.5)
    assert_gradients_match_finite_differences(layer, make_votes(seed=5, scale=2.0))


def test_bias_starts_at_the_official_constant_and_is_saved_in_the_config():
    layer = make_layer("dynamic", 3, use_bias=True)
    assert layer.bias.shape == (4, 5)  # [J, D] of the small votes
    np.testing.assert_allclose(layer.bias.numpy(), BIAS_INIT, rtol=1e-7)  # a float32 constant
    assert BIAS_INIT == 0.1
    config = layer.get_config()
    assert config["use_bias"] is True and config["leaky"] is False
    assert type(layer).from_config(config).use_bias
    assert not make_layer("dynamic", 3).weights  # the paper's routing has none
