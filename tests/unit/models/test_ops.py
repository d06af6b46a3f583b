"""Squash and safe norms against plain NumPy."""
import numpy as np
import tensorflow as tf

from capsrun.models.ops import safe_norm, squash
from tests.helpers import numpy_squash


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
