"""Self-attention routing of Efficient-CapsNet (Mazzia, Salvetti & Chiaberge 2021,
"Efficient-CapsNet: capsule network with self-attention routing", Scientific Reports 11):
one pass, no iterations; the coupling comes from how much the votes for a parent agree with
each other, plus a learned prior.

Shapes (see `capsrun.models.routing.base`): votes u_hat [B, J, I, D] -> parents v [B, J, D],
coupling c [B, J, I]; the learned prior b [J, I] is created in `build`.

    A_j   = U_j U_j^T / sqrt(D),  U_j = [u_hat_j|1, ..., u_hat_j|I]          [B, J, I, I]
            (the scaled dot products between the votes of every two inputs for parent j)
    a_ij  = sum_k A_j[i, k] = u_hat_j|i . (sum_k u_hat_j|k) / sqrt(D)             [B, J, I]
            (k runs over all I inputs, i itself included)
    c_ij  = exp(a_ij) / sum_j' exp(a_ij') + b_ji       (softmax over the J parents) [B, J, I]
    s_j   = sum_i c_ij u_hat_j|i                                                    [B, J, D]
    v_j   = squash(s_j)                                                             [B, J, D]

The row sums a_ij are computed as one dot product with the sum of the votes, without forming
the I x I matrices A_j (the same numbers). `coupling` returns c_ij as above, prior included
(the weights the votes were summed with; they sum to 1 + sum_j b_ji over the parents).

Checked against the authors' code, github.com/EscVM/Efficient-CapsNet, utils/layers.py
(class FCCaps, `call`): c = einsum('...ij,...kj->...i', u, u) / sqrt(D) with u [B, J, I, D]
and D the output capsule dimension, softmax over axis 1 (the parents), then `c + self.b` with
self.b of shape [J, I, 1] initialised to zeros, s = sum over the inputs of u * c, then their
Squash. So the prior is added to the softmax output (the paper calls B the "log priors", but
it is not added to the logits) and the agreement sums over all inputs, i included; this module
does the same. b is `log_prior` [J, I], zeros at the start.

The squash (`model.routing_squash`, argument `squash`):
    "paper"      Sabour et al. eq. 1, |s|^2 / (1 + |s|^2) s / |s| (`capsrun.models.ops.squash`);
    "efficient"  Efficient-CapsNet's, (1 - 1 / exp(|s|)) s / |s| (utils/layers.py, class Squash),
                 computed as -expm1(-|s|) s / |s| with |s| = sqrt(sum s^2 + EPSILON), which is
                 finite with finite gradients at s = 0 (the authors add 1e-20 to |s| instead).

Computed in the fast form of capsrun.models.routing.contractions (the votes read by three
batched matrix-vector products, their gradient one matmul); the plain autodiff form is
`plain_self_attention_routing` in capsrun.models.reference.
`iterations` is ignored. Computed in the votes' dtype (the prior in the layer's variable dtype,
which is the votes' dtype when the layer is built with dtype=votes.dtype).
"""
from typing import Tuple

import keras
import tensorflow as tf

from capsrun.models.ops import safe_norm, squash
from capsrun.models.routing.base import RoutingLayer
from capsrun.models.routing.contractions import Votes, fast_routing, softmax_over_outputs


def efficient_squash(vectors: tf.Tensor) -> tf.Tensor:
    """Efficient-CapsNet's squash (1 - e^-|s|) s / |s| along the last axis; same shape."""
    norm = safe_norm(vectors, axis=-1, keepdims=True)
    return -tf.math.expm1(-norm) * vectors / norm


SQUASHES = {"paper": squash, "efficient": efficient_squash}
"""`model.routing_squash` -> the squash function (capsrun/config/validation.py checks the names)."""


@keras.saving.register_keras_serializable(package="capsrun")
class SelfAttentionRouting(RoutingLayer):
    """Efficient-CapsNet's non-iterative self-attention routing with a learned prior [J, I]."""

    def __init__(self, iterations: int = 3, squash: str = "paper", **kwargs):
        super().__init__(iterations=iterations, **kwargs)
        if squash not in SQUASHES:
            raise ValueError(f"unknown squash '{squash}'; choose one of {', '.join(SQUASHES)}")
        self.squash = squash

    def get_config(self) -> dict:
        return {**super().get_config(), "squash": self.squash}

    def build(self, votes_shape: tuple) -> None:
        self.log_prior = self.add_weight(
            name="log_prior", shape=(int(votes_shape[1]), int(votes_shape[2])), initializer="zeros"
        )

    def call(self, votes: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        scale = 1.0 / float(votes.shape[-1]) ** 0.5
        squash_parents = SQUASHES[self.squash]

        def body(view: Votes, prior: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
            total = view.mean_sum(1.0)  # sum_k u_hat_j|k  [B, J, D]
            agreement = view.dot(total * tf.constant(scale, view.dtype))  # a_ij [B, J, I], scaled on [B, J, D]
            coupling = softmax_over_outputs(agreement) + prior
            return squash_parents(view.weighted_sum(coupling)), coupling

        return fast_routing(body, votes, [tf.cast(self.log_prior, votes.dtype)])


ROUTING = SelfAttentionRouting
