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
batched matrix-vector products and their gradient is one matmul; the normalisation has its
gradient written out (`max_min_excess`) and the lb floor is added to the [B, D] sums, not to the
[B, J, I] coupling (`route_max_min`). The plain autodiff form is `plain_max_min_routing` in
capsrun.models.reference. Computed in the votes' dtype; no weights.
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
    return lower + max_min_excess(logits, lower, upper)


def max_min_excess(logits: tf.Tensor, lower: float = LOWER_BOUND, upper: float = UPPER_BOUND) -> tf.Tensor:
    """e = c - lb = (ub - lb) (b - min_j b) / max(max_j b - min_j b, EPSILON) over axis 1 of
    logits b [B, J, I]: the max-min coupling above its floor lb. Returns [B, J, I].

    The routing weighs the votes with e and adds lb sum_i u_hat once (see `route_max_min`),
    which saves the `+ lb` pass over [B, J, I] per round. Its vector-Jacobian product is written
    out: autodiff of reduce_min / reduce_max adds an equality mask, a count and a division per
    reduction, and broadcast-gradient sums for every [B, 1, I] operand (about 13 passes over
    [B, J, I] where this needs 9). With k = ub - lb, m = min_j b, M = max_j b,
    s = max(M - m, EPSILON), upstream g [B, J, I], G = sum_j g_j and T = sum_j g_j e_j / s
    (e_j = k (b_j - m) / s, so d e_j / d s = -e_j / s):

        dL/db_j = k g_j / s + [b_j = M] dL/dM + [b_j = m] dL/dm      (otherwise just k g_j / s)
        dL/dM   = -T,     dL/dm = T - k G / s                        while M - m > EPSILON;
        all J logits equal (the floor holds): dL/dm = -k G / s, shared by the J tied logits.

    Exact ties between some but not all parents would give each tied logit the whole dL/dM
    (tf.reduce_max splits it); routing logits are sums of float dot products, where such ties
    do not occur. Checked against autodiff of the plain formula in the unit tests."""
    lower, upper = float(lower), float(upper)

    @tf.custom_gradient
    def excess(logits: tf.Tensor):
        return _excess_and_gradient(logits, upper - lower)

    return excess(logits)


def _excess_and_gradient(logits: tf.Tensor, width: float):
    """(e [B, J, I], its vector-Jacobian product) for `max_min_excess`; width = ub - lb."""
    num_outputs = logits.shape[1]
    smallest = tf.reduce_min(logits, axis=1, keepdims=True)
    largest = tf.reduce_max(logits, axis=1, keepdims=True)
    spread = tf.maximum(largest - smallest, EPSILON)
    scale = width / spread  # k / s on [B, 1, I]: the division on the small operand
    excess = (logits - smallest) * scale  # not b k/s - m k/s: that cancels in float32

    def gradient(upstream: tf.Tensor) -> tf.Tensor:
        total = tf.reduce_sum(upstream, axis=1, keepdims=True)  # G [B, 1, I]
        share = tf.reduce_sum(upstream * excess, axis=1, keepdims=True) / spread  # T
        d_max = tf.where(largest - smallest > EPSILON, -share, -scale * total / num_outputs)
        d_min = share - scale * total
        extremes = tf.where(tf.equal(logits, largest), d_max,
                            tf.where(tf.equal(logits, smallest), d_min, tf.zeros_like(d_min)))
        return upstream * scale + extremes

    return excess, gradient


def route_max_min(votes: tf.Tensor, iterations: int) -> Tuple[tf.Tensor, tf.Tensor]:
    """`iterations` rounds of max-min routing of votes u_hat [B, J, I, D]; returns
    (v [B, J, D], c [B, J, I] of the last round). The fast form (`fast_routing`).

    With c = lb + e (`max_min_excess`), s_j = sum_i e_ij u_hat_j|i + lb sum_i u_hat_j|i: the
    plain sum is taken once (the first round is s = lb sum_i u_hat), so no round adds lb to the
    [B, J, I] coupling, except the last round's, which is returned."""

    def body(view: Votes) -> Tuple[tf.Tensor, tf.Tensor]:
        floor = view.mean_sum(LOWER_BOUND)  # lb sum_i u_hat [B, J, D]: all of round 1, part of every round
        coupling = tf.fill(tf.shape(view.votes)[:3], tf.constant(LOWER_BOUND, view.dtype))
        parents, logits = squash(floor), None
        for _ in range(iterations - 1):
            agreement = view.dot(parents)
            logits = agreement if logits is None else logits + agreement
            excess = max_min_excess(logits)
            parents = squash(view.weighted_sum(excess) + floor)
            coupling = excess  # + lb below, for the last round only
        return parents, coupling if iterations == 1 else coupling + LOWER_BOUND

    return fast_routing(body, votes)


@keras.saving.register_keras_serializable(package="capsrun")
class MaxMinRouting(RoutingLayer):
    """`iterations` rounds of routing-by-agreement with max-min normalised coupling; no weights."""

    def call(self, votes: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        return route_max_min(votes, self.iterations)


ROUTING = MaxMinRouting
