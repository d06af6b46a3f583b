"""Margin loss and reconstruction loss, per example, in float32.

Convention (as in the paper and its reference code): the reconstruction loss of one example is
the SUM of squared pixel errors over all pixels (784 for MNIST), and `recon_weight` (0.0005)
multiplies that sum. Scaling a per-pixel MEAN by 0.0005 instead would make the regulariser
784x weaker than the paper's.
"""
import tensorflow as tf


def margin_loss(lengths, targets, m_plus=0.9, m_minus=0.1, lambda_=0.5):
    """Eq. 4 of the paper, summed over classes.

    lengths: float32 [B, J] capsule lengths. targets: float32 [B, J], 1 for every class present
    (one-hot for MNIST, two-hot for MultiMNIST). Returns float32 [B]:
    sum_k T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2.
    """
    present = targets * tf.square(tf.nn.relu(m_plus - lengths))
    absent = lambda_ * (1.0 - targets) * tf.square(tf.nn.relu(lengths - m_minus))
    return tf.reduce_sum(present + absent, axis=-1)


def reconstruction_loss(images, reconstructions):
    """Sum of squared errors per example. images, reconstructions: [B, H, W, C]. Returns [B]."""
    errors = tf.square(tf.cast(images, tf.float32) - tf.cast(reconstructions, tf.float32))
    return tf.reduce_sum(tf.reshape(errors, [tf.shape(errors)[0], -1]), axis=-1)


def class_targets(labels, num_classes):
    """float32 [B, J]: 1 for every class in `labels` (int [B], or int [B, K] for K digits)."""
    targets = tf.one_hot(labels, num_classes, dtype=tf.float32)
    return tf.reduce_max(targets, axis=-2) if labels.shape.rank == 2 else targets


def correct_predictions(predicted, labels):
    """float32 [B]: 1 where the prediction is right. For K digits per image (labels int [B, K])
    an image counts only when both sorted label sets agree (the K longest capsules are its digits)."""
    if labels.shape.rank == 2:
        same = tf.equal(tf.sort(predicted, axis=-1), tf.sort(labels, axis=-1))
        return tf.cast(tf.reduce_all(same, axis=-1), tf.float32)
    return tf.cast(tf.equal(predicted, labels), tf.float32)


def capsule_losses(loss_cfg, lengths, labels, images, reconstructions, num_classes):
    """Per-example losses for a batch: dict of float32 [B] tensors `margin`, `reconstruction`, `total`.

    labels: int [B] or [B, K] (every listed class is a margin-loss target); images and
    reconstructions: [B, H, W, C], or [B, K, H, W, C] for one reconstruction per digit.
    total = margin + loss_cfg.recon_weight * reconstruction (sum of squared errors, see above).
    """
    targets = class_targets(labels, num_classes)
    margin = margin_loss(lengths, targets, loss_cfg.m_plus, loss_cfg.m_minus, loss_cfg.lambda_)
    reconstruction = reconstruction_loss(images, reconstructions)
    return {
        "margin": margin,
        "reconstruction": reconstruction,
        "total": margin + loss_cfg.recon_weight * reconstruction,
    }
