"""Squash, safe norms, prediction vectors and routing against plain NumPy."""
import numpy as np
import tensorflow as tf

from capsrun.models.layers import DigitCaps
from capsrun.models.ops import safe_norm, squash
from tests.helpers import dynamic_routing, votes_in_paper_layout


def numpy_squash(s):
    norm2 = np.sum(s**2, axis=-1, keepdims=True)
    return norm2 / (1 + norm2) * s / np.sqrt(norm2)


def numpy_routing(u_hat, iterations):
    """Procedure 1 of the paper, one example at a time. u_hat: [B, I, J, D]."""
    batch, inputs, outputs, _ = u_hat.shape
    all_v, all_c = [], []
    for b in range(batch):
        logits = np.zeros((inputs, outputs))
        for r in range(iterations):
            c = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            s = np.einsum("ij,ijd->jd", c, u_hat[b])
            v = numpy_squash(s)
            if r < iterations - 1:
                logits = logits + np.einsum("ijd,jd->ij", u_hat[b], v)
        all_v.append(v)
        all_c.append(c)
    return np.stack(all_v), np.stack(all_c)


def test_squash_matches_numpy_and_keeps_length_below_one():
    s = np.random.default_rng(0).normal(size=(4, 10, 16)).astype(np.float32) * 3
    v = squash(tf.constant(s)).numpy()
    np.testing.assert_allclose(v, numpy_squash(s), rtol=1e-5, atol=1e-6)
    assert np.all(np.linalg.norm(v, axis=-1) < 1.0)


def test_squash_and_norm_of_zero_vector_are_finite_with_finite_gradients():
    zero = tf.zeros([2, 3, 8])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(zero)
        squashed = squash(zero)
        length = safe_norm(zero)
    assert np.all(np.isfinite(squashed.numpy())) and np.all(squashed.numpy() == 0)
    assert np.all(np.isfinite(length.numpy()))
    for value in (squashed, length):
        assert np.all(np.isfinite(tape.gradient(value, zero).numpy()))


def test_routing_matches_numpy_reference():
    u_hat = np.random.default_rng(1).normal(size=(3, 20, 10, 16)).astype(np.float32) * 0.3
    for iterations in (1, 2, 3):
        v, c = dynamic_routing(tf.constant(u_hat), iterations)
        v_ref, c_ref = numpy_routing(u_hat.astype(np.float64), iterations)
        np.testing.assert_allclose(v.numpy(), v_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(c.numpy(), c_ref, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(c.numpy().sum(axis=-1), 1.0, rtol=1e-5)


def test_one_routing_iteration_uses_uniform_coupling():
    u_hat = np.random.default_rng(2).normal(size=(2, 5, 4, 3)).astype(np.float32)
    v, c = dynamic_routing(tf.constant(u_hat), 1)
    np.testing.assert_allclose(c.numpy(), 0.25)
    np.testing.assert_allclose(v.numpy(), numpy_squash(0.25 * u_hat.sum(axis=1)), rtol=1e-5, atol=1e-6)


def test_prediction_vectors_equal_w_times_u_for_every_pair():
    layer = DigitCaps(num_capsules=4, dim=6, routing_iterations=2)
    u = tf.random.stateless_normal([3, 7, 5], seed=[1, 2])
    layer(u)
    u_hat = votes_in_paper_layout(layer, u).numpy()
    expected = np.einsum("ijdk,bik->bijd", layer.kernel.numpy(), u.numpy())
    np.testing.assert_allclose(u_hat, expected, rtol=1e-5, atol=1e-6)
    assert u_hat.shape == (3, 7, 4, 6)
