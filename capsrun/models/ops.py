"""Capsule arithmetic shared by layers and routing algorithms: squash and safe vector lengths.

Shapes: any; the capsule dimension is `axis` (the last one by default). float32 throughout.
"""
import tensorflow as tf

EPSILON = 1e-7
"""Added under square roots so that a zero vector has a finite length and finite gradients."""


def safe_norm(vectors: tf.Tensor, axis: int = -1, keepdims: bool = False) -> tf.Tensor:
    """Euclidean length sqrt(sum(v^2) + EPSILON) along `axis`; finite gradient at zero."""
    return tf.sqrt(tf.reduce_sum(tf.square(vectors), axis=axis, keepdims=keepdims) + EPSILON)


def squash(vectors: tf.Tensor, axis: int = -1) -> tf.Tensor:
    """The paper's non-linearity v = |s|^2 / (1 + |s|^2) * s / |s| (eq. 1).

    Short vectors shrink to almost zero length, long ones to just below 1.
    `vectors`: any shape; squashing is along `axis`. Returns the same shape.
    """
    squared = tf.reduce_sum(tf.square(vectors), axis=axis, keepdims=True)
    scale = squared / (1.0 + squared) / tf.sqrt(squared + EPSILON)
    return vectors * scale


def squash_gradient(vectors: tf.Tensor, upstream: tf.Tensor) -> tf.Tensor:
    """The vector-Jacobian product of `squash` along the last axis: d loss / d s for
    s `vectors` [..., D] and d loss / d squash(s) `upstream` [..., D]; returns [..., D].

    squash(s) = g(n) s with n = |s|^2 and g(n) = n / ((1 + n) sqrt(n + EPSILON)), so
    ds = g(n) dv + 2 g'(n) (s . dv) s, g'(n) = (1 / (1 + n) - n / (2 (n + EPSILON))) / ((1 + n) sqrt(n + EPSILON)).
    """
    squared = tf.reduce_sum(tf.square(vectors), axis=-1, keepdims=True)
    root = tf.sqrt(squared + EPSILON)
    scale = squared / (1.0 + squared) / root
    slope = (1.0 / (1.0 + squared) - squared / (2.0 * (squared + EPSILON))) / ((1.0 + squared) * root)
    along = tf.reduce_sum(vectors * upstream, axis=-1, keepdims=True)
    return scale * upstream + 2.0 * slope * along * vectors


def top_labels(scores: tf.Tensor, num_targets: int) -> tf.Tensor:
    """The predicted class int32 [B] of scores [B, J], or for num_targets T > 1 the T classes with
    the highest scores in increasing class order, int32 [B, T]. What `predict_labels` of most models returns."""
    if num_targets == 1:
        return tf.argmax(scores, axis=-1, output_type=tf.int32)
    return tf.sort(tf.math.top_k(scores, k=num_targets).indices, axis=-1)
