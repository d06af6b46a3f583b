"""Uniform routing (`model.routing=uniform`): NumPy reference, finite differences, equality with
dynamic routing of one iteration, and training inside the real CapsNet."""
import numpy as np
import pytest
import tensorflow as tf

from capsrun.models.routing.dynamic import route
from tests.unit.models.routing_checks import (
    Probe,
    assert_gradients_match_finite_differences,
    make_layer,
    make_votes,
    numpy_squash,
    train_one_step_and_round_trip,
)


def numpy_uniform(votes):
    """c_ij = 1 / J, v_j = squash(sum_i u_hat_j|i / J). votes [B, J, I, D] float64."""
    parents = votes.shape[1]
    return numpy_squash(votes.sum(axis=2) / parents), np.full(votes.shape[:3], 1.0 / parents)


@pytest.mark.parametrize("iterations", [1, 3])
def test_uniform_matches_numpy_and_ignores_iterations(iterations):
    votes = make_votes(seed=1, scale=3.0)
    parents, coupling = make_layer("uniform", iterations)(tf.constant(votes))
    expected_parents, expected_coupling = numpy_uniform(votes)
    np.testing.assert_allclose(parents.numpy(), expected_parents, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(coupling.numpy(), expected_coupling)
    assert parents.shape == (2, 4, 5) and coupling.shape == (2, 4, 6)


def test_uniform_gradients_match_finite_differences():
    assert_gradients_match_finite_differences(make_layer("uniform", 3), make_votes(seed=2, scale=3.0))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_uniform_equals_dynamic_with_one_iteration_in_values_and_gradients(dtype):
    votes = tf.constant(make_votes(seed=3, scale=3.0, dtype=dtype))
    probe = Probe(votes.shape, dtype=dtype)
    results = []
    for routing in (make_layer("uniform", 3, dtype=dtype), lambda v: route(v, 1)):
        with tf.GradientTape() as tape:
            tape.watch(votes)
            outputs = routing(votes)
            loss = probe(outputs)
        results.append([outputs[0].numpy(), outputs[1].numpy(), tape.gradient(loss, votes).numpy()])
    tolerance = {"float32": dict(rtol=1e-6, atol=1e-7), "float64": dict(rtol=1e-12, atol=1e-14)}[dtype]
    for uniform, dynamic in zip(*results):
        assert uniform.dtype == dynamic.dtype == np.dtype(dtype)
        np.testing.assert_allclose(uniform, dynamic, **tolerance)
    # ... while dynamic routing with more iterations moves away from it: the votes do route
    assert np.abs(route(votes, 3)[1].numpy() - 0.25).max() > 0.3


def test_capsnet_with_uniform_routing_trains_and_round_trips(tmp_path):
    names = train_one_step_and_round_trip(tmp_path, "uniform")
    assert not [name for name in names if "/router/" in name]  # no weights of its own
