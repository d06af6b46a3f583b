"""Every routing of ROUTINGS in float64: outputs and weights stay in the votes' dtype, the gradients
(dynamic's hand-written one included) equal central finite differences, and float64 agrees with
float32."""
import numpy as np
import pytest
import tensorflow as tf

from capsrun.models.routing import ROUTINGS
from capsrun.models.routing.dynamic import route
from tests.unit.models.routing_checks import (
    assert_gradients_match_finite_differences,
    make_layer,
    make_votes,
    randomize_weights,
)

CASES = [(name, iterations) for name in ROUTINGS for iterations in (1, 2, 3)]


def routed_layer(name, iterations, dtype, seed=11):
    layer = make_layer(name, iterations, dtype=dtype)
    randomize_weights(layer, seed=seed, scale=0.1)
    return layer


@pytest.mark.parametrize("name, iterations", CASES)
def test_routing_computes_in_float64(name, iterations):
    layer = routed_layer(name, iterations, "float64")
    parents, coupling = layer(tf.constant(make_votes(seed=1)))
    assert parents.dtype == coupling.dtype == tf.float64
    assert all(weight.dtype == "float64" for weight in layer.weights)
    assert np.all(np.isfinite(parents.numpy())) and np.all(np.isfinite(coupling.numpy()))


@pytest.mark.parametrize("name, iterations", CASES)
def test_routing_gradients_match_finite_differences_in_float64(name, iterations):
    assert_gradients_match_finite_differences(routed_layer(name, iterations, "float64"), make_votes(seed=2, scale=1.5))


@pytest.mark.parametrize("name, iterations", CASES)
def test_float64_agrees_with_float32(name, iterations):
    votes = make_votes(seed=3)
    wide, narrow = routed_layer(name, iterations, "float64"), routed_layer(name, iterations, "float32")
    for wide_weight, narrow_weight in zip(wide.weights, narrow.weights):
        narrow_weight.assign(wide_weight.numpy().astype(np.float32))
    for a, b in zip(wide(tf.constant(votes)), narrow(tf.constant(votes.astype(np.float32)))):
        assert b.dtype == tf.float32
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_dynamic_route_keeps_float64_in_its_first_coupling_and_its_gradient(iterations):
    votes = tf.constant(make_votes(seed=4))
    with tf.GradientTape() as tape:
        tape.watch(votes)
        parents, coupling = route(votes, iterations)
        loss = tf.reduce_sum(parents ** 2) + tf.reduce_sum(coupling * votes[..., 0])
    assert parents.dtype == coupling.dtype == tf.float64
    gradient = tape.gradient(loss, votes)
    assert gradient.dtype == tf.float64 and np.all(np.isfinite(gradient.numpy()))
