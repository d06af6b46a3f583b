"""Loss terms, per example, in float32: margin loss (eq. 4), reconstruction loss, cross-entropy.

Convention (as in the paper and the official code): the reconstruction loss of one example is
the SUM of squared pixel errors over all pixels (784 for MNIST), and `recon_weight` (0.0005)
multiplies that sum. Scaling a per-pixel MEAN by 0.0005 instead would make the regulariser
784x weaker than the paper's.

Shapes: B batch, J classes, T objects per image, H, W, C image.
"""
from dataclasses import dataclass
from typing import Any, Dict

import tensorflow as tf

MARGIN_REDUCTIONS = ("sum", "mean")
"""How the margin loss of one example combines its J classes (`loss.margin_reduction`)."""


def margin_loss(lengths: tf.Tensor, targets: tf.Tensor, m_plus: float = 0.9, m_minus: float = 0.1,
                lambda_: float = 0.5, scale: float = 1.0, reduction: str = "sum") -> tf.Tensor:
    """Eq. 4 of the paper, summed (or averaged) over classes, times `scale`.

    lengths: float32 [B, J] capsule lengths. targets: float32 [B, J], 1 for every class present
    (one-hot for MNIST, two-hot for MultiMNIST). Returns float32 [B]:
    scale * sum_k T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2, or with
    reduction "mean" that sum / J. The paper: scale 1, "sum". The official code (research/capsules,
    layers.py `_margin_loss` and `evaluate`): 0.5 * present + 0.5 * lambda * absent, averaged over
    the batch AND the classes, i.e. scale 0.5 and "mean": 1/20 of the paper's on MNIST.
    """
    present = targets * tf.square(tf.nn.relu(m_plus - lengths))
    absent = lambda_ * (1.0 - targets) * tf.square(tf.nn.relu(lengths - m_minus))
    per_class = present + absent
    combined = tf.reduce_mean(per_class, axis=-1) if reduction == "mean" else tf.reduce_sum(per_class, axis=-1)
    return combined * scale if scale != 1.0 else combined


def reconstruction_loss(images: tf.Tensor, reconstructions: tf.Tensor) -> tf.Tensor:
    """Sum of squared errors per example. images, reconstructions: [B, ...] alike. Returns [B]."""
    errors = tf.square(tf.cast(images, tf.float32) - tf.cast(reconstructions, tf.float32))
    return tf.reduce_sum(tf.reshape(errors, [tf.shape(errors)[0], -1]), axis=-1)


def class_targets(labels: tf.Tensor, num_classes: int) -> tf.Tensor:
    """float32 [B, J]: 1 for every class in `labels` (int [B], or int [B, T] for T objects)."""
    targets = tf.one_hot(labels, num_classes, dtype=tf.float32)
    return tf.reduce_max(targets, axis=-2) if labels.shape.rank == 2 else targets


@dataclass(frozen=True)
class CapsuleLoss:
    """The paper's loss: margin loss on the capsule lengths plus `recon_weight` times the
    reconstruction loss (the `loss` config group)."""

    m_plus: float = 0.9
    m_minus: float = 0.1
    lambda_: float = 0.5
    recon_weight: float = 0.0005
    margin_scale: float = 1.0
    margin_reduction: str = "sum"

    @classmethod
    def from_config(cls, loss_cfg: Any) -> "CapsuleLoss":
        """From the `loss` config group (m_plus, m_minus, lambda_, recon_weight, margin_scale,
        margin_reduction; the last two default to the paper's when absent, as in older runs)."""
        return cls(float(loss_cfg.m_plus), float(loss_cfg.m_minus), float(loss_cfg.lambda_),
                   float(loss_cfg.recon_weight), float(loss_cfg.get("margin_scale", 1.0)),
                   str(loss_cfg.get("margin_reduction", "sum")))

    def __call__(self, lengths: tf.Tensor, labels: tf.Tensor, targets: tf.Tensor,
                 reconstructions: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Per-example float32 [B] `margin`, `reconstruction` and `total`.

        lengths [B, J]; labels int [B] or [B, T] (every listed class is a margin-loss target);
        targets and reconstructions [B, H, W, C], or [B, T, H, W, C] for one per object.
        """
        margin = margin_loss(lengths, class_targets(labels, lengths.shape[-1]), self.m_plus, self.m_minus,
                             self.lambda_, self.margin_scale, self.margin_reduction)
        reconstruction = reconstruction_loss(targets, reconstructions)
        return {"margin": margin, "reconstruction": reconstruction,
                "total": margin + self.recon_weight * reconstruction}


def cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Softmax cross-entropy float32 [B] of int labels [B] and logits [B, J]."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


SPREAD_SCHEDULES = ("sigmoid", "linear")
"""How the spread loss's margin grows with the training step (`loss.spread_schedule`)."""


def spread_margin(step: tf.Tensor, m_min: float = 0.2, m_max: float = 0.99, schedule: str = "sigmoid",
                  steps: float = 50000.0) -> tf.Tensor:
    """The spread loss's margin m float32 [] at training step `step` (0 for the first step).

    "sigmoid": m_min + (m_max - m_min) sigmoid(min(10, step / steps - 4)); with m_min 0.2,
    m_max 0.99 and steps 50,000 it is the authors' schedule, "margin = 0.2 + .79 *
    tf.sigmoid(tf.minimum(10.0, step / 50000.0 - 4))" at batch size 64 (their answer on
    OpenReview, forum HJWLfGWRb; quoted in github.com/IBM/matrix-capsules-with-em-routing,
    models.py `spread_loss`): 0.21 at the start, 0.59 at step 200,000, 0.99 from about 500,000.
    "linear": the paper's text (section 3.1, "we start with a small margin of 0.2 and linearly
    increase it during training to 0.9"), m_min + (m_max - m_min) min(1, step / steps); the
    paper does not say over how many steps."""
    step = tf.cast(step, tf.float32)
    if schedule == "linear":
        return m_min + (m_max - m_min) * tf.minimum(1.0, step / steps)
    return m_min + (m_max - m_min) * tf.sigmoid(tf.minimum(10.0, step / steps - 4.0))


def spread_loss(activations: tf.Tensor, labels: tf.Tensor, margin: tf.Tensor) -> tf.Tensor:
    """Eq. 3 of Hinton et al. 2018: sum_{i != t} max(0, m - (a_t - a_i))^2 per example.

    activations float32 [B, J] (class capsule activations), labels int [B] (the target t),
    margin m float32 []. Returns float32 [B]."""
    targets = tf.one_hot(labels, activations.shape[-1], dtype=activations.dtype)
    target = tf.reduce_sum(activations * targets, axis=-1, keepdims=True)  # a_t [B, 1]
    return tf.reduce_sum(tf.square(tf.nn.relu(margin - (target - activations))) * (1.0 - targets), axis=-1)


@dataclass(frozen=True)
class SpreadLoss:
    """The spread loss with its margin schedule (the `loss` config group's spread_* keys)."""

    m_min: float = 0.2
    m_max: float = 0.99
    schedule: str = "sigmoid"
    steps: float = 50000.0

    @classmethod
    def from_config(cls, loss_cfg: Any) -> "SpreadLoss":
        return cls(float(loss_cfg.get("spread_m_min", 0.2)), float(loss_cfg.get("spread_m_max", 0.99)),
                   str(loss_cfg.get("spread_schedule", "sigmoid")), float(loss_cfg.get("spread_steps", 50000)))

    def margin(self, step: tf.Tensor) -> tf.Tensor:
        """The margin float32 [] at training step `step`."""
        return spread_margin(step, self.m_min, self.m_max, self.schedule, self.steps)

    def __call__(self, activations: tf.Tensor, labels: tf.Tensor, step: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Per-example float32 [B] `spread` and `total` (the same) at training step `step`."""
        spread = spread_loss(tf.cast(activations, tf.float32), labels, self.margin(step))
        return {"spread": spread, "total": spread}
