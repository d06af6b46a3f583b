"""Routing-by-agreement with max-min normalisation of the routing logits instead of a softmax
(Zhao, Kleinhans, Sandhu, Patel & Unnikrishnan 2019, "Capsule networks with max-min
normalization", arXiv:1903.09662).

Shapes (see `capsrun.models.routing.base`): votes u_hat [B, J, I, D] -> parents v [B, J, D],
coupling c [B, J, I] of the last iteration. r = `iterations` >= 1, lb = 0.01, ub = 1.0.

    b_ij = 0                                                                        [B, J, I]
    repeat r times:
        m_ij = lb + (ub - lb) (b_ij - min_k b_ik) / (max_k b_ik - min_k b_ik)       [B, J, I]
               (k runs over the J parents: each input capsule i is rescaled on its own,
               its best-agreeing parent gets ub, its worst lb)
        c_ij = m_ij / sum_k m_ik      renormalize=True (the default)                [B, J, I]
        c_ij = m_ij                   renormalize=False (Zhao et al.'s coupling)     [B, J, I]
        s_j  = sum_i c_ij u_hat_j|i                                                 [B, J, D]
        v_j  = squash(s_j)                         (Sabour et al. eq. 1)             [B, J, D]
        b_ij = b_ij + u_hat_j|i . v_j              (not after the last iteration)

i.e. Procedure 1 of Sabour, Frost & Hinton (2017) with line 4, c_i = softmax(b_i), replaced.

What was used and where it comes from:
- the axis: over the parent (class) capsules j of each input capsule i, the axis of Procedure 1's
  softmax. Adeli, Ahn & Zelinsky (2023, "A brain-inspired object-based attention network for
  multiobject recognition and visual reasoning", Journal of Vision 23(5):16,
  doi:10.1167/jov.23.5.16), who route with Zhao et al.'s normalisation and cite it, write that
  the couplings "are normalized across the class capsule dimension"; their code
  (github.com/Hosseinadeli/OCRA, ocra.py, `DenseCapsule.forward`) takes min and max over the
  output-capsule axis.
- the bounds lb = 0.01, ub = 1.0: that paper's values, and its code's 0.01 + 0.99 (b - min) /
  (max - min) (LOWER_BOUND, UPPER_BOUND below).
- b = 0 at the start, as in Procedure 1. Equal logits give 0 / 0; the denominator is floored at
  `capsrun.models.ops.EPSILON`, so equal logits (all of the first iteration) give m = lb, and
  c = 1 / J when renormalised, which is Procedure 1's softmax(0) (the OCRA code's first round).
- the renormalisation is capsrun's, not Zhao et al.'s. Without it (renormalize=False) the c_ij of
  one input sum to about 5 over J = 10 parents, and the couplings follow the agreement even while
  the logits are tiny (max-min is scale-invariant), so at the first steps s_j is 5 to 20 times
  longer than with the softmax's 1 / J (measured at initialisation: mean |s_j| 0.19 against
  0.010, MNIST, batch 64). On the paper's backbone under `convention=paper`, Adam's first
  steps then push every class capsule to length ~1 and the margin loss stays at 3.56 (one
  epoch: 9.58% test accuracy, docs/performance.md). Renormalised, the couplings keep what
  max-min is for (best / worst = ub / lb = 100 for every input, whatever the logits' scale;
  a softmax of logits near 0 stays near 1 / J) but sum to 1 like a softmax's, and it learns
  (docs/performance.md). Under `convention=official` the couplings as they are also learned
  (measured over 50 steps of batch 64), so renormalize=False stays available.
The paper's own text (its section 3) and code could not be read here: no public implementation by
the authors was found. Its bounds, its first iteration, whether it renormalised, and its number
of iterations (its abstract: max-min "allows more routing iterations without a decrease in
network performance") are therefore unconfirmed; the defaults keep Procedure 1's 3 iterations.

Computed in the fast form of capsrun.models.routing.contractions: the votes are read only by
batched matrix-vector products and their gradient is one matmul; the normalisation has its
gradient written out (`max_min_excess`). Without renormalisation the lb floor is added to the
[B, J, D] sums, not to the [B, J, I] coupling (`route_max_min`). The plain autodiff form is
`plain_max_min_routing` in capsrun.models.reference. Computed in the votes' dtype; no weights.
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


class _Extremes:
    """The min and max over axis 1 (the J parents) of logits b [B, J, I] that both max-min
    normalisations read, and the placement of their gradient.

    Both normalisations are functions of shifted = b - m [B, J, I] and s = max(M - m, EPSILON)
    [B, 1, I] (m = min_j b, M = max_j b). Given dL/ds and the sum over j of dL/d shifted_j (both
    [B, 1, I]), m and M pass them on to their logits: while M - m > EPSILON, dL/dM = dL/ds and
    dL/dm = -dL/ds - sum_j dL/d shifted_j; when the floor holds, s does not depend on the logits,
    so dL/dM = 0 and dL/dm = -sum_j dL/d shifted_j, and when all J logits are equal (each one
    both the min and the max) they share it, 1 / J each (tf.reduce_min's split between ties).
    Exact ties between some but not all parents give each tied logit the whole dL/dM or dL/dm
    (tf.reduce_max would split it); routing logits are sums of float dot products, where such
    ties do not occur.

    The placement is two equality masks and two selects over [B, J, I]; the minimum's mask
    compares b - m with a scalar 0 (exact at the minimum), which spares a broadcast operand."""

    def __init__(self, logits: tf.Tensor):
        self.logits = logits
        self.num_outputs = logits.shape[1]
        smallest = tf.reduce_min(logits, axis=1, keepdims=True)
        self.largest = tf.reduce_max(logits, axis=1, keepdims=True)
        self.range = self.largest - smallest  # M - m [B, 1, I]
        self.spread = tf.maximum(self.range, EPSILON)  # s
        self.shifted = logits - smallest  # b - m [B, J, I]

    def place(self, d_spread: tf.Tensor, d_shifted: tf.Tensor) -> tf.Tensor:
        """[b_j = M] dL/dM + [b_j = m] dL/dm [B, J, I] from dL/ds and sum_j dL/d shifted_j."""
        unfloored = self.range > EPSILON
        d_max = tf.where(unfloored, d_spread, tf.where(self.range > 0, tf.zeros_like(d_shifted),
                                                       -d_shifted / self.num_outputs))
        d_min = tf.where(unfloored, -d_spread - d_shifted, -d_shifted)
        return tf.where(tf.equal(self.logits, self.largest), d_max,
                        tf.where(tf.equal(self.shifted, 0), d_min, tf.zeros_like(d_min)))


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

    with dL/ds = -T and the sum of dL/d(b_j - m) over j, k G / s, placed on the extremes by
    `_Extremes.place`. Checked against autodiff of the plain formula in the unit tests."""
    lower, upper = float(lower), float(upper)

    @tf.custom_gradient
    def excess(logits: tf.Tensor):
        return _excess_and_gradient(logits, upper - lower)

    return excess(logits)


def _excess_and_gradient(logits: tf.Tensor, width: float):
    """(e [B, J, I], its vector-Jacobian product) for `max_min_excess`; width = ub - lb."""
    bounds = _Extremes(logits)
    scale = width / bounds.spread  # k / s on [B, 1, I]: the division on the small operand
    excess = bounds.shifted * scale  # not b k/s - m k/s: that cancels in float32

    def gradient(upstream: tf.Tensor) -> tf.Tensor:
        total = tf.reduce_sum(upstream, axis=1, keepdims=True)  # G [B, 1, I]
        share = tf.reduce_sum(upstream * excess, axis=1, keepdims=True) / bounds.spread  # T
        return upstream * scale + bounds.place(d_spread=-share, d_shifted=scale * total)

    return excess, gradient


def renormalized_max_min(logits: tf.Tensor, lower: float = LOWER_BOUND, upper: float = UPPER_BOUND) -> tf.Tensor:
    """c_j = n_j / sum_k n_k with n_j = lb + (ub - lb) (b_j - m) / s over axis 1 (the J parents)
    of logits b [B, J, I] (m = min_j b, M = max_j b, s = max(M - m, EPSILON)): each input's
    max-min couplings divided by their sum, so that they sum to 1 over the parents like a
    softmax's. Returns [B, J, I].

    One expression with its vector-Jacobian product written out, not `max_min_normalize` followed
    by a division. With k = ub - lb the sum is N = sum_j n_j = J lb + k sum_j (b_j - m) / s, so c
    is affine in b_j - m on each input,

        c_j = a (b_j - m) + lb / N,    a = k / (s N)                          (a, N on [B, 1, I])

    six passes over [B, J, I] forward (a softmax takes five). The sum runs over b_j - m, not
    S - J m with S = sum_j b_j: that cancels in float32, and by (ub - lb) / EPSILON when the
    logits are (nearly) equal. Backward, with upstream g [B, J, I], T = sum_j g_j c_j and
    H = sum_j dL/dn_j = (sum_j g_j - J T) / N:

        dL/db_j = a (g_j - T) + [b_j = M] dL/dM + [b_j = m] dL/dm

    with dL/ds = -sum_j dL/dn_j (n_j - lb) / s = lb H / s (because sum_j (g_j - T) n_j = 0) and
    the sum of dL/d(b_j - m) over j, k H / s, placed on the extremes by `_Extremes.place` (so
    dL/dM = lb H / s and dL/dm = -ub H / s while M - m > EPSILON). Autodiff of
    `max_min_normalize` and the division took about 22 passes over [B, J, I] per normalisation;
    this takes 16 (6 forward, 10 backward), against the softmax's 9
    (`capsrun.models.routing.contractions.softmax_over_outputs`). Checked against autodiff of the
    plain formula in the unit tests."""
    lower, upper = float(lower), float(upper)

    @tf.custom_gradient
    def coupling(logits: tf.Tensor):
        return _renormalized_and_gradient(logits, lower, upper)

    return coupling(logits)


def _renormalized_and_gradient(logits: tf.Tensor, lower: float, upper: float):
    """(c [B, J, I], its vector-Jacobian product) for `renormalized_max_min`."""
    num_outputs, width = logits.shape[1], upper - lower
    bounds = _Extremes(logits)
    scale = width / bounds.spread  # k / s [B, 1, I]
    # b - m is exactly 0 at the minimum, so equal logits give lb / (J lb) = 1 / J
    norm = num_outputs * lower + scale * tf.reduce_sum(bounds.shifted, axis=1, keepdims=True)  # N [B, 1, I]
    slope = scale / norm  # a
    coupling = bounds.shifted * slope + lower / norm

    def gradient(upstream: tf.Tensor) -> tf.Tensor:
        share = tf.reduce_sum(upstream * coupling, axis=1, keepdims=True)  # T
        total = tf.reduce_sum(upstream, axis=1, keepdims=True)  # sum_j g_j
        excess = (total - num_outputs * share) / (norm * bounds.spread)  # H / s
        return (upstream - share) * slope + bounds.place(d_spread=lower * excess, d_shifted=width * excess)

    return coupling, gradient


def route_max_min(votes: tf.Tensor, iterations: int, renormalize: bool = True) -> Tuple[tf.Tensor, tf.Tensor]:
    """`iterations` rounds of max-min routing of votes u_hat [B, J, I, D]; returns
    (v [B, J, D], c [B, J, I] of the last round). The fast form (`fast_routing`).

    renormalize=False (Zhao et al.'s couplings as they are): with c = lb + e (`max_min_excess`),
    s_j = sum_i e_ij u_hat_j|i + lb sum_i u_hat_j|i: the plain sum is taken once (the first
    round is s = lb sum_i u_hat), so no round adds lb to the [B, J, I] coupling, except the last
    round's, which is returned. renormalize=True: c = `renormalized_max_min`(b), weighed in
    directly (its denominator differs per input); the first round's c = 1 / J is a plain sum."""
    num_outputs = votes.shape[1]

    def body(view: Votes) -> Tuple[tf.Tensor, tf.Tensor]:
        first = 1.0 / num_outputs if renormalize else LOWER_BOUND  # c of round 1 (all logits 0)
        floor = view.mean_sum(first)  # first sum_i u_hat [B, J, D]: all of round 1
        coupling = tf.fill(tf.shape(view.votes)[:3], tf.constant(first, view.dtype))
        parents, logits = squash(floor), None
        for _ in range(iterations - 1):
            agreement = view.dot(parents)
            logits = agreement if logits is None else logits + agreement
            if renormalize:
                coupling = renormalized_max_min(logits)
                parents = squash(view.weighted_sum(coupling))
            else:  # lb sum_i u_hat is round 1's sum: part of every round
                excess = max_min_excess(logits)
                parents = squash(view.weighted_sum(excess) + floor)
                coupling = excess  # + lb below, for the last round only
        if renormalize or iterations == 1:
            return parents, coupling
        return parents, coupling + LOWER_BOUND

    return fast_routing(body, votes)


@keras.saving.register_keras_serializable(package="capsrun")
class MaxMinRouting(RoutingLayer):
    """`iterations` rounds of routing-by-agreement with max-min normalised coupling; no weights.
    `renormalize` (`model.max_min_renormalize`): divide each input's couplings by their sum over
    the parents (module docstring)."""

    def __init__(self, iterations: int = 3, renormalize: bool = True, **kwargs):
        super().__init__(iterations=iterations, **kwargs)
        self.renormalize = bool(renormalize)

    def get_config(self) -> dict:
        return {**super().get_config(), "renormalize": self.renormalize}

    def call(self, votes: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        return route_max_min(votes, self.iterations, self.renormalize)


ROUTING = MaxMinRouting
