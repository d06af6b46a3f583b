"""Dynamic routing (routing-by-agreement, Procedure 1 of Sabour, Frost & Hinton 2017) with a
hand-written gradient: the fast path of capsrun's CapsNet.

Interface and shapes: see `capsrun.models.routing.base`. The plain autodiff version the
gradient is tested against lives in `capsrun.models.reference` (PlainDigitCaps).
"""
from typing import Optional, Tuple

import keras
import tensorflow as tf

from capsrun.models.ops import squash, squash_gradient
from capsrun.models.routing.base import RoutingLayer, unused_gradient
from capsrun.models.routing.contractions import (
    dot_over_dims,
    softmax_gradient,
    softmax_values,
    sum_of_outer_products,
    sum_over_inputs,
)


def route(votes: tf.Tensor, iterations: int, bias: Optional[tf.Tensor] = None,
          leaky: bool = False) -> Tuple[tf.Tensor, tf.Tensor]:
    """Routing-by-agreement in the layout of the fast path, with a hand-written gradient.

    votes: u_hat float32 [B, J, I, D] (digit capsule j before primary capsule i, so that
        both contractions of an iteration are one batched matrix-vector product each and no
        transpose is needed inside the loop); iterations: r >= 1; bias: optional b_j [J, D]
        added to s_j in every iteration (the official code's capsule bias); leaky: leaky
        routing (see `capsrun.models.routing.contractions.softmax_values`).
    Returns (v float32 [B, J, D], c float32 [B, J, I] of the last iteration).

    The logits b start at zero for each example; c = softmax(b) over the J digit capsules;
    s_j = sum_i c_ij u_hat_j|i (+ bias_j); v_j = squash(s_j); b_ij += u_hat_j|i . v_j.

    The forward pass reads u_hat once per contraction (2r - 1 reads); the first iteration's
    uniform coupling (1/J, or 1/(J + 1) when leaky) is a plain sum. The backward pass runs the
    iterations in reverse and gathers the gradient of u_hat as ONE batched matmul of the 2r - 1
    coefficient maps with their vectors ([B, J, 2r-1, I]^T x [B, J, 2r-1, D]) instead of
    autodiff's 2r - 1 outer products and their sum, each as large as u_hat; it reads u_hat
    2r - 2 more times. The softmax's vector-Jacobian product is `contractions.softmax_gradient`
    (it holds for the leaky softmax too); the bias's gradient is the sum of d s over the
    iterations and the batch.
    """
    num_outputs = votes.shape[1]
    uniform = 1.0 / (num_outputs + 1 if leaky else num_outputs)

    def forward(predictions, offset):
        states, logits, coupling = [], None, None
        for iteration in range(iterations):
            if iteration == 0:
                coupling = tf.fill(tf.shape(predictions)[:3], tf.constant(uniform, predictions.dtype))
                weighted = tf.reduce_sum(predictions, axis=2) * uniform
            else:
                coupling = softmax_values(logits, leaky)
                weighted = sum_over_inputs(coupling, predictions)
            if offset is not None:
                weighted = weighted + offset
            capsules = squash(weighted)
            states.append((coupling, weighted, capsules))
            if iteration < iterations - 1:
                agreement = dot_over_dims(predictions, capsules)
                logits = agreement if logits is None else logits + agreement
        return capsules, coupling, states

    def backward(predictions, states, d_capsules, d_coupling):
        maps, vectors, d_logits, d_offset = [], [], None, None
        for iteration in reversed(range(iterations)):
            coupling, weighted, capsules = states[iteration]
            if iteration < iterations - 1:
                d_capsules = sum_over_inputs(d_logits, predictions)
                maps.append(d_logits)
                vectors.append(capsules)
            d_weighted = squash_gradient(weighted, d_capsules)
            d_offset = d_weighted if d_offset is None else d_offset + d_weighted
            maps.append(coupling)
            vectors.append(d_weighted)
            if iteration > 0:
                d_c = dot_over_dims(predictions, d_weighted)
                if iteration == iterations - 1 and not unused_gradient(d_coupling):
                    d_c = d_c + d_coupling
                d_b = softmax_gradient(coupling, d_c)
                d_logits = d_b if d_logits is None else d_logits + d_b
        return sum_of_outer_products(maps, vectors), tf.reduce_sum(d_offset, axis=0)

    if bias is None:
        @tf.custom_gradient
        def _route(predictions):
            capsules, coupling, states = forward(predictions, None)

            def gradient(d_capsules, d_coupling):
                return backward(predictions, states, d_capsules, d_coupling)[0]

            return (capsules, coupling), gradient

        return _route(votes)

    @tf.custom_gradient
    def _route_with_bias(predictions, offset):
        capsules, coupling, states = forward(predictions, offset)

        def gradient(d_capsules, d_coupling):
            return backward(predictions, states, d_capsules, d_coupling)

        return (capsules, coupling), gradient

    return _route_with_bias(votes, tf.cast(bias, votes.dtype))


BIAS_INIT = 0.1
"""Initial value of the capsule bias (`use_bias`): the official code's `bias_variable`
(research/capsules/models/layers/variables.py, a constant 0.1)."""


@keras.saving.register_keras_serializable(package="capsrun")
class DynamicRouting(RoutingLayer):
    """`route` as a routing layer: `iterations` rounds of routing-by-agreement. With
    `use_bias`, it learns the bias b [J, D] of its parents (the official code's capsule layer
    adds it to s_j before every squash; 160 weights on MNIST); `leaky` routes with leaky
    routing. Neither is in the paper; both are `convention=official` choices."""

    def __init__(self, iterations: int = 3, use_bias: bool = False, leaky: bool = False, **kwargs):
        super().__init__(iterations=iterations, **kwargs)
        self.use_bias, self.leaky = bool(use_bias), bool(leaky)

    def get_config(self) -> dict:
        return {**super().get_config(), "use_bias": self.use_bias, "leaky": self.leaky}

    def build(self, votes_shape: tuple) -> None:
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(int(votes_shape[1]), int(votes_shape[3])),
                                        initializer=keras.initializers.Constant(BIAS_INIT))

    def call(self, votes: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        return route(votes, self.iterations, self.bias if self.use_bias else None, self.leaky)


ROUTING = DynamicRouting
