"""The digit-capsule layer: prediction vectors (votes) u_hat = W u."""
import numpy as np
import tensorflow as tf

from capsrun.models.layers import DigitCaps
from tests.helpers import votes_in_paper_layout


def test_prediction_vectors_equal_w_times_u_for_every_pair():
    layer = DigitCaps(num_capsules=4, dim=6, routing_iterations=2)
    u = tf.random.stateless_normal([3, 7, 5], seed=[1, 2])
    layer(u)
    u_hat = votes_in_paper_layout(layer, u).numpy()
    expected = np.einsum("ijdk,bik->bijd", layer.kernel.numpy(), u.numpy())
    np.testing.assert_allclose(u_hat, expected, rtol=1e-5, atol=1e-6)
    assert u_hat.shape == (3, 7, 4, 6)
