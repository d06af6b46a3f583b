"""Dynamic routing (routing-by-agreement, Procedure 1 of Sabour, Frost & Hinton 2017) with a
hand-written gradient: the fast path of capsrun's CapsNet.

Interface and shapes: see `capsrun.models.routing.base`. The plain autodiff version the
gradient is tested against lives in `capsrun.models.reference` (PlainDigitCaps).
"""
from typing import Tuple

import keras
import tensorflow as tf

from capsrun.models.ops import squash, squash_gradient
from capsrun.models.routing.base import RoutingLayer


def _sum_over_inputs(weights, predictions):
    """sum_i weights[b, j, i] * predictions[b, j, i, :]: [B, J, I] x [B, J, I, D] -> [B, J, D],
    one batched matrix-vector product per (b, j)."""
    return tf.squeeze(tf.matmul(weights[:, :, None, :], predictions), axis=2)


def _dot_over_dims(predictions, vectors):
    """predictions[b, j, i, :] . vectors[b, j, :]: [B, J, I, D] x [B, J, D] -> [B, J, I]."""
    return tf.squeeze(tf.matmul(predictions, vectors[..., None]), axis=-1)


def _softmax_over_outputs(logits):
    """softmax over axis 1 (the J digit capsules) of logits [B, J, I], as elementwise ops:
    tf.nn.softmax would transpose J to the last axis and back."""
    exponentials = tf.exp(logits - tf.reduce_max(logits, axis=1, keepdims=True))
    return exponentials / tf.reduce_sum(exponentials, axis=1, keepdims=True)


def route(votes: tf.Tensor, iterations: int) -> Tuple[tf.Tensor, tf.Tensor]:
    """Routing-by-agreement in the layout of the fast path, with a hand-written gradient.

    votes: u_hat float32 [B, J, I, D] (digit capsule j before primary capsule i, so that
        both contractions of an iteration are one batched matrix-vector product each and no
        transpose is needed inside the loop); iterations: r >= 1.
    Returns (v float32 [B, J, D], c float32 [B, J, I] of the last iteration).

    The logits b start at zero for each example; c = softmax(b) over the J digit capsules;
    s_j = sum_i c_ij u_hat_j|i; v_j = squash(s_j); b_ij += u_hat_j|i . v_j.

    The forward pass reads u_hat once per contraction (2r - 1 reads); the first iteration's
    uniform coupling is a plain sum. The backward pass runs the iterations in reverse and
    gathers the gradient of u_hat as ONE batched matmul of the 2r - 1 coefficient maps with
    their vectors ([B, J, 2r-1, I]^T x [B, J, 2r-1, D]) instead of autodiff's 2r - 1 outer
    products and their sum, each as large as u_hat; it reads u_hat 2r - 2 more times.
    """
    num_outputs = votes.shape[1]

    @tf.custom_gradient
    def _route(predictions):
        states, logits, coupling = [], None, None
        for iteration in range(iterations):
            if iteration == 0:
                coupling = tf.fill(tf.shape(predictions)[:3], tf.constant(1.0 / num_outputs, predictions.dtype))
                weighted = tf.reduce_sum(predictions, axis=2) / num_outputs
            else:
                coupling = _softmax_over_outputs(logits)
                weighted = _sum_over_inputs(coupling, predictions)
            capsules = squash(weighted)
            states.append((coupling, weighted, capsules))
            if iteration < iterations - 1:
                agreement = _dot_over_dims(predictions, capsules)
                logits = agreement if logits is None else logits + agreement

        def gradient(d_capsules, d_coupling):
            maps, vectors, d_logits = [], [], None
            for iteration in reversed(range(iterations)):
                coupling, weighted, capsules = states[iteration]
                if iteration < iterations - 1:
                    d_capsules = _sum_over_inputs(d_logits, predictions)
                    maps.append(d_logits)
                    vectors.append(capsules)
                d_weighted = squash_gradient(weighted, d_capsules)
                maps.append(coupling)
                vectors.append(d_weighted)
                if iteration > 0:
                    d_c = _dot_over_dims(predictions, d_weighted)
                    if iteration == iterations - 1 and d_coupling is not None:
                        d_c = d_c + d_coupling
                    d_b = coupling * (d_c - tf.reduce_sum(coupling * d_c, axis=1, keepdims=True))
                    d_logits = d_b if d_logits is None else d_logits + d_b
            return tf.matmul(tf.stack(maps, axis=2), tf.stack(vectors, axis=2), transpose_a=True)

        return (capsules, coupling), gradient

    return _route(votes)


@keras.saving.register_keras_serializable(package="capsrun")
class DynamicRouting(RoutingLayer):
    """`route` as a routing layer: `iterations` rounds of routing-by-agreement, no weights."""

    def call(self, votes: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        return route(votes, self.iterations)


ROUTING = DynamicRouting
