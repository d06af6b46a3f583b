"""Dynamic routing (`route`, with its hand-written gradient) against plain NumPy and plain autodiff."""
import numpy as np
import pytest
import tensorflow as tf

from capsrun.models.ops import squash
from capsrun.models.routing.dynamic import route
from tests.helpers import assert_same, dynamic_routing, numpy_dynamic_routing, numpy_squash


def plain_routing(predictions, iterations, constant_coupling=False):
    """Procedure 1 with plain TensorFlow ops and autodiff. predictions [B, I, J, D].
    constant_coupling: no gradient through the coupling coefficients (tf.stop_gradient)."""
    logits = tf.zeros(tf.shape(predictions)[:3])
    for iteration in range(iterations):
        coupling = tf.nn.softmax(logits, axis=2)
        if constant_coupling:
            coupling = tf.stop_gradient(coupling)
        capsules = squash(tf.reduce_sum(coupling[..., None] * predictions, axis=1))
        if iteration < iterations - 1:
            logits = logits + tf.reduce_sum(predictions * capsules[:, None], axis=-1)
    return capsules, coupling


def test_routing_matches_numpy_reference():
    u_hat = np.random.default_rng(1).normal(size=(3, 20, 10, 16)).astype(np.float32) * 0.3
    for iterations in (1, 2, 3):
        v, c = dynamic_routing(tf.constant(u_hat), iterations)
        v_ref, c_ref = numpy_dynamic_routing(np.transpose(u_hat, [0, 2, 1, 3]).astype(np.float64), iterations)
        c_ref = np.transpose(c_ref, [0, 2, 1])  # [B, I, J], the layout of dynamic_routing
        np.testing.assert_allclose(v.numpy(), v_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(c.numpy(), c_ref, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(c.numpy().sum(axis=-1), 1.0, rtol=1e-5)


def test_one_routing_iteration_uses_uniform_coupling():
    u_hat = np.random.default_rng(2).normal(size=(2, 5, 4, 3)).astype(np.float32)
    v, c = dynamic_routing(tf.constant(u_hat), 1)
    np.testing.assert_allclose(c.numpy(), 0.25)
    np.testing.assert_allclose(v.numpy(), numpy_squash(0.25 * u_hat.sum(axis=1)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("iterations", [1, 2, 3, 4])
def test_route_matches_plain_autodiff_in_values_and_gradients(iterations):
    rng = np.random.default_rng(iterations)
    predictions = tf.constant(rng.normal(size=(3, 40, 10, 16)).astype(np.float32) * 0.4)
    weights_v = tf.constant(rng.normal(size=(3, 10, 16)).astype(np.float32))
    weights_c = tf.constant(rng.normal(size=(3, 40, 10)).astype(np.float32))
    results = []
    for routing in (dynamic_routing, plain_routing):
        with tf.GradientTape() as tape:
            tape.watch(predictions)
            capsules, coupling = routing(predictions, iterations)
            loss = tf.reduce_sum(capsules * weights_v) + tf.reduce_sum(coupling * weights_c)
        results.append((capsules, coupling, tape.gradient(loss, predictions)))
    for fast, plain in zip(*results):
        assert_same(fast, plain, rtol=1e-4, atol_fraction=1e-5)
    assert np.abs(results[0][1].numpy() - 1 / 10).max() > 0.01 or iterations == 1  # routing did move


def test_route_has_finite_gradients_for_zero_predictions():
    predictions = tf.zeros([2, 10, 3, 4])
    with tf.GradientTape() as tape:
        tape.watch(predictions)
        capsules, _ = route(predictions, 3)
        loss = tf.reduce_sum(capsules)
    gradient = tape.gradient(loss, predictions)
    assert np.all(np.isfinite(gradient.numpy()))



@pytest.mark.parametrize("iterations", [3, 5])
def test_route_gradient_flows_through_the_coupling_coefficients(iterations):
    """At the default routing shapes (1152 primary capsules, 10 digit capsules of 16 dimensions),
    with votes of which a third agree per digit capsule, so that the coupling moves far from
    uniform, and a loss of the capsules alone (their directions; no term of the coupling output):
    the gradient that flows through the coupling coefficients is a large part of the whole, and
    the hand-written gradient equals plain autodiff to float32 round-off. A backward pass that
    treats the coupling as constant (stop_gradient) misses that part and cannot meet the tolerance."""
    rng = np.random.default_rng(iterations)
    batch, inputs, outputs, dim = 2, 1152, 10, 16
    agree = rng.random((batch, inputs, outputs, 1)) < 1 / 3
    directions = rng.normal(size=(batch, 1, outputs, dim))
    predictions = tf.constant((0.1 * rng.normal(size=(batch, inputs, outputs, dim))
                               + 0.3 * agree * directions).astype(np.float32))
    weights_v = tf.constant(rng.normal(size=(batch, outputs, dim)).astype(np.float32))

    def coupling_and_gradient(routing, **options):
        with tf.GradientTape() as tape:
            tape.watch(predictions)
            capsules, coupling = routing(predictions, iterations, **options)
            loss = tf.reduce_sum(tf.math.l2_normalize(capsules, axis=-1) * weights_v)
        return coupling.numpy(), tape.gradient(loss, predictions).numpy()

    coupling, fast = coupling_and_gradient(dynamic_routing)
    _, plain = coupling_and_gradient(plain_routing)
    _, without_coupling_path = coupling_and_gradient(plain_routing, constant_coupling=True)
    assert np.abs(coupling - 1 / outputs).max() > 0.5  # far from the uniform 0.1
    through_coupling = np.linalg.norm(plain - without_coupling_path) / np.linalg.norm(plain)
    assert through_coupling > 0.1, through_coupling  # the path the test is about carries a large part
    error = np.linalg.norm(fast - plain) / np.linalg.norm(plain)
    assert error < 1e-5, f"hand-written gradient is off by {error:.3g} of its norm ({through_coupling:.3g} " \
                         "would be the gradient through the coupling coefficients)"
    assert_same(fast, plain, rtol=1e-4, atol_fraction=1e-5)
