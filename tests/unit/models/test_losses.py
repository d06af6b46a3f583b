"""Margin and reconstruction losses and their weighted total."""
import numpy as np
import tensorflow as tf

from capsrun.models.losses import CapsuleLoss, margin_loss, reconstruction_loss
from tests.conftest import compose_config


def test_margin_loss_matches_hand_computed_values():
    lengths = tf.constant([[0.95, 0.05, 0.5], [0.2, 0.7, 0.1]])
    targets = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # example 1: present 0.95 > 0.9 -> 0; absent 0.05 < 0.1 -> 0; absent 0.5: 0.5 * 0.4^2 = 0.08
    # example 2: absent 0.2: 0.5 * 0.1^2 = 0.005; present 0.7: 0.2^2 = 0.04; absent 0.1 -> 0
    loss = margin_loss(lengths, targets, m_plus=0.9, m_minus=0.1, lambda_=0.5).numpy()
    np.testing.assert_allclose(loss, [0.08, 0.045], rtol=1e-5)


def test_reconstruction_loss_is_the_sum_of_squared_errors_per_image():
    images = tf.zeros([2, 28, 28, 1])
    recon = tf.fill([2, 28, 28, 1], 0.5)
    np.testing.assert_allclose(reconstruction_loss(images, recon).numpy(), [784 * 0.25] * 2, rtol=1e-6)


def test_total_loss_weights_the_summed_reconstruction_error(smoke_cfg):
    lengths = tf.constant([[0.95] + [0.0] * 9])
    images, recon = tf.zeros([1, 28, 28, 1]), tf.fill([1, 28, 28, 1], 0.5)
    losses = CapsuleLoss.from_config(smoke_cfg.loss)(lengths, tf.constant([0]), images, recon)
    np.testing.assert_allclose(losses["total"].numpy(), [0.0005 * 196.0], rtol=1e-5)
    no_recon = compose_config("loss.recon_weight=0").loss
    assert float(CapsuleLoss.from_config(no_recon)(lengths, tf.constant([0]), images, recon)["total"][0]) == 0.0
