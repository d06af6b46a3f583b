"""Routing-by-agreement with max-min normalisation of the routing logits instead of a softmax
(Zhao, Kleinhans, Sandhu, Patel & Unnikrishnan 2019, "Capsule networks with max-min
normalization", arXiv:1903.09662).

Shapes (see `capsrun.models.routing.base`): votes u_hat [B, J, I, D] -> parents v [B, J, D],
coupling c [B, J, I] of the last iteration. r = `iterations` >= 1.

    b_ij = 0                                                                        [B, J, I]
    repeat r times:
        c_ij = lb + (ub - lb) (b_ij - min_k b_ik) / (max_k b_ik - min_k b_ik)       [B, J, I]
               (k runs over the J parents: each input capsule i is rescaled on its own,
               its best-agreeing parent gets ub, its worst lb; the c_ij of one input do
               not sum to 1)
        s_j  = sum_i c_ij u_hat_j|i                                                 [B, J, D]
        v_j  = squash(s_j)                         (Sabour et al. eq. 1)             [B, J, D]
        b_ij = b_ij + u_hat_j|i . v_j              (not after the last iteration)

i.e. Procedure 1 of Sabour, Frost & Hinton (2017) with line 4, c_i = softmax(b_i), replaced.

What was used and where it comes from:
- the axis: the normalisation runs over the parent (class) capsules j of each input capsule i,
  the axis the softmax of Procedure 1 runs over; Adeli, Ahn & Zelinsky (2023, "A brain-inspired
  object-based attention network for multiobject recognition and visual reasoning", Journal of
  Vision 23(5):16, doi:10.1167/jov.23.5.16), who route with Zhao et al.'s normalisation and cite
  it, write in their methods that the coupling coefficients "are normalized across the class
  capsule dimension following the max-min normalization";
- the bounds lb = 0.01, ub = 1.0: the values that paper gives for its Zhao et al. routing
  (LOWER_BOUND, UPPER_BOUND below);
- the initial logits b = 0, as in Procedure 1. For equal logits the max-min ratio is 0 / 0; the
  denominator is floored at `capsrun.models.ops.EPSILON`, so equal logits (in particular all of
  the first iteration) give c_ij = lb for every parent, and the first iteration is
  s_j = lb sum_i u_hat_j|i.
The paper's own text and code were not available to check these three points against (no
public implementation by the authors was found); they are the reading above, to be confirmed
against arXiv:1903.09662 section 3 before quoting numbers from it.

Computed in the fast form of capsrun.models.routing.contractions: the votes are read only by
batched matrix-vector products and their gradient is one matmul; autodiff differentiates the
[B, J, I] logits (max and min pass the gradient to the extreme logits). The plain autodiff form
is `plain_max_min_routing` in capsrun.models.reference. Computed in the votes' dtype; no weights.
"""
from typing import Tuple

import keras
import tensorflow as tf

from capsrun.models.ops import EPSILON, squash
from capsrun.models.routing.base import RoutingLayer
from capsrun.models.routing.contractions import Votes, fast_routing

LOWER_BOUND = 0.01
"""lb: the coupling of an input capsule with its least-agreeing parent."""
UPPER_BOUND = 1.0
"""ub: the coupling of an input capsule with its best-agreeing parent."""


def max_min_normalize(logits: tf.Tensor, lower: float = LOWER_BOUND, upper: float = UPPER_BOUND) -> tf.Tensor:
    """lb + (ub - lb) (b - min_j b) / (max_j b - min_j b) over axis 1 (the J parents) of
    logits b [B, J, I]; the range is floored at EPSILON (equal logits give lb). Returns [B, J, I]."""
    smallest = tf.reduce_min(logits, axis=1, keepdims=True)
    spread = tf.maximum(tf.reduce_max(logits, axis=1, keepdims=True) - smallest, EPSILON)
    return lower + (upper - lower) * (logits - smallest) / spread


def route_max_min(votes: tf.Tensor, iterations: int) -> Tuple[tf.Tensor, tf.Tensor]:
    """`iterations` rounds of max-min routing of votes u_hat [B, J, I, D]; returns
    (v [B, J, D], c [B, J, I] of the last round). The fast form (`fast_routing`)."""

    def body(view: Votes) -> Tuple[tf.Tensor, tf.Tensor]:
        logits, coupling, parents = None, None, None
        for iteration in range(iterations):
            if logits is None:  # b = 0: all logits equal, c = lb (see the module docstring)
                coupling = tf.fill(tf.shape(view.votes)[:3], tf.constant(LOWER_BOUND, view.dtype))
                parents = squash(view.mean_sum(LOWER_BOUND))
            else:
                coupling = max_min_normalize(logits)
                parents = squash(view.weighted_sum(coupling))
            if iteration < iterations - 1:
                agreement = view.dot(parents)
                logits = agreement if logits is None else logits + agreement
        return parents, coupling

    return fast_routing(body, votes)


@keras.saving.register_keras_serializable(package="capsrun")
class MaxMinRouting(RoutingLayer):
    """`iterations` rounds of routing-by-agreement with max-min normalised coupling; no weights."""

    def call(self, votes: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        return route_max_min(votes, self.iterations)


ROUTING = MaxMinRouting
