"""Uniform routing: every input capsule sends the same share of its vote to every parent, with
no agreement step. The control against which the routing algorithms are compared.

Shapes (see `capsrun.models.routing.base`): votes u_hat [B, J, I, D] -> parents v [B, J, D],
coupling c [B, J, I].

    c_ij = 1 / J                                      for every input i and parent j, [B, J, I]
    s_j  = sum_i c_ij u_hat_j|i = (1 / J) sum_i u_hat_j|i                             [B, J, D]
    v_j  = squash(s_j)        (Sabour et al. eq. 1, `capsrun.models.ops.squash`)     [B, J, D]

This is the first iteration of routing-by-agreement (Sabour, Frost & Hinton 2017, "Dynamic
routing between capsules", Procedure 1 with the logits b_ij = 0), so it equals `dynamic` with
`model.routing_iterations=1` in values and gradients. Paik, Kwak & Kim (2019, "Capsule networks
need an improved routing algorithm") use such uniform coupling as the baseline that iterative
routing has to beat. `iterations` is ignored; the layer has no weights. Computed in the votes'
dtype.
"""
from typing import Tuple

import keras
import tensorflow as tf

from capsrun.models.ops import squash
from capsrun.models.routing.base import RoutingLayer


@keras.saving.register_keras_serializable(package="capsrun")
class UniformRouting(RoutingLayer):
    """Fixed coupling 1/J, parents squash(sum_i u_hat_j|i / J); no weights, no iterations."""

    def call(self, votes: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        num_outputs = votes.shape[1]
        coupling = tf.fill(tf.shape(votes)[:3], tf.constant(1.0 / num_outputs, votes.dtype))
        parents = squash(tf.reduce_sum(votes, axis=2) / num_outputs)
        return parents, coupling


ROUTING = UniformRouting
