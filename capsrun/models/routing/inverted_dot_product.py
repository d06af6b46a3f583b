"""Inverted dot-product attention routing (Tsai, Srivastava, Goh & Salakhutdinov 2020,
"Capsules with inverted dot-product attention routing", ICLR 2020, Procedure 1): the parents
compete for each input capsule by the dot product of their pose with its vote, and a learned
LayerNorm replaces the squash.

Shapes (see `capsrun.models.routing.base`): votes u_hat [B, J, I, D] -> parents p [B, J, D],
coupling r [B, J, I] of the last round. t = `iterations` >= 1 rounds.

    p_j   = 0                                                                       [B, J, D]
    repeat t times:
        a_ij = p_j . u_hat_j|i / sqrt(D)                     (agreement)            [B, J, I]
        r_ij = exp(a_ij) / sum_j' exp(a_ij')                 (softmax over parents) [B, J, I]
        p_j  = LayerNorm(sum_i r_ij u_hat_j|i)               (over the D pose dims) [B, J, D]

The first round has p = 0, so r_ij = 1 / J and p_j = LayerNorm(sum_i u_hat_j|i / J); it is
computed so. LayerNorm(x) = gamma * (x - mean(x)) / sqrt(var(x) + 1e-5) + beta over the D
dimensions of each capsule, one learned gamma [D] (ones at the start) and beta [D] (zeros),
shared by all parents and rounds; a Keras LayerNormalization created in `build`.

Checked against the authors' code, github.com/yaohungt/Capsules-Inverted-Attention-Routing,
src/layers.py (class CapsuleFC, `forward`) and src/capsule_model.py (the routing loop):
- the first call routes with softmax(zeros) over the parents, i.e. 1 / J;
- the agreement is einsum('bna, namd, bmd->bnm', input, w, next_capsule_value) multiplied by
  `self.scale` = 1 / sqrt(out_d_capsules), so the code scales by 1 / sqrt(D) where the paper's
  Procedure 1 and eq. (2) write the plain dot product p_j^T v_ij; this module follows the code;
- softmax over the parents (dim=2 of [b, n inputs, m parents]), then a renormalisation by the
  sum + 1e-10, which is the identity up to 1e-10 and is left out here;
- nn.LayerNorm(out_d_capsules) (PyTorch's eps 1e-5, learned affine) after every round;
- `num_routing` counts all rounds, the first (uniform) one included: 1 + (num_routing - 1)
  calls per layer; `iterations` here counts the same way;
- their dropout on the pose before the LayerNorm (rate `--dp`, default 0) is left out.
The poses are not squashed: their lengths are about sqrt(D) gamma, not in [0, 1) (the authors
classify with a linear layer on the pose; capsrun's margin loss reads the lengths).

Computed in the fast form of capsrun.models.routing.contractions (the votes read only by batched
matrix-vector products, their gradient one matmul; autodiff differentiates the rest); the
LayerNorm is `layer_norm` below with the Keras layer's gamma and beta. The plain autodiff form is
`plain_inverted_dot_product_routing` in capsrun.models.reference. Computed in the votes' dtype.
"""
from typing import Tuple

import keras
import tensorflow as tf

from capsrun.models.routing.base import RoutingLayer
from capsrun.models.routing.contractions import Votes, fast_routing, softmax_over_outputs

LAYER_NORM_EPSILON = 1e-5
"""PyTorch's nn.LayerNorm default, which the authors' code uses (Keras' default is 1e-3)."""


@keras.saving.register_keras_serializable(package="capsrun")
class InvertedDotProductRouting(RoutingLayer):
    """`iterations` rounds of inverted dot-product attention; learns the LayerNorm's gamma and beta [D]."""

    def build(self, votes_shape: tuple) -> None:
        self.layer_norm = keras.layers.LayerNormalization(
            axis=-1, epsilon=LAYER_NORM_EPSILON, dtype=self.dtype_policy, name="layer_norm"
        )
        self.layer_norm.build((None, int(votes_shape[1]), int(votes_shape[3])))

    def call(self, votes: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        num_outputs, scale, rounds = votes.shape[1], 1.0 / float(votes.shape[-1]) ** 0.5, self.iterations

        def body(view: Votes, gamma: tf.Tensor, beta: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
            coupling = tf.fill(tf.shape(view.votes)[:3], tf.constant(1.0 / num_outputs, view.dtype))
            parents = layer_norm(view.mean_sum(1.0 / num_outputs), gamma, beta)
            for _ in range(rounds - 1):
                # (u . p) / sqrt(D) as u . (p / sqrt(D)): the scale on [B, J, D], not on [B, J, I]
                coupling = softmax_over_outputs(view.dot(parents * tf.constant(scale, view.dtype)))
                parents = layer_norm(view.weighted_sum(coupling), gamma, beta)
            return parents, coupling

        weights = [tf.cast(self.layer_norm.gamma, votes.dtype), tf.cast(self.layer_norm.beta, votes.dtype)]
        return fast_routing(body, votes, weights)


def layer_norm(poses: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor) -> tf.Tensor:
    """gamma (x - mean(x)) / sqrt(var(x) + 1e-5) + beta over the last axis of poses [B, J, D]
    (what the layer's keras LayerNormalization computes, with its gamma and beta [D] passed as
    tensors, as the fast form needs)."""
    mean = tf.reduce_mean(poses, axis=-1, keepdims=True)
    centred = poses - mean
    variance = tf.reduce_mean(tf.square(centred), axis=-1, keepdims=True)
    return gamma * centred * tf.math.rsqrt(variance + LAYER_NORM_EPSILON) + beta


ROUTING = InvertedDotProductRouting
