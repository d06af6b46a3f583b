"""The fast form shared by the iterative routings: every read of the votes is one of two
contractions, and the gradient of the votes is gathered as ONE batched matmul.

Every routing here touches the votes u_hat [B, J, I, D] only through

    weighted_sum(w)  s[b, j, :] = sum_i w[b, j, i] u_hat[b, j, i, :]    w [B, J, I] -> s [B, J, D]
    dot(x)           a[b, j, i] = u_hat[b, j, i, :] . x[b, j, :]         x [B, J, D] -> a [B, J, I]
    mean_sum(scale)  s[b, j, :] = scale sum_i u_hat[b, j, i, :]                       -> s [B, J, D]

(each one batched matrix-vector product per (b, j) in the [B, J, I, D] layout, no transpose);
everything else works on the 1/D-size [B, J, I] maps or the [B, J, D] capsules. The gradient of
the votes is then a sum of outer products, one per contraction:

    weighted_sum(w) with upstream ds:  d u_hat += w (x) ds     (and dw = dot(ds))
    dot(x) with upstream da:           d u_hat += da (x) x     (and dx = weighted_sum(da))
    mean_sum(scale) with upstream ds:  d u_hat += scale (x) ds

Autodiff writes each outer product as a tensor as large as u_hat and adds them up (and reads
u_hat through transposes for the softmax over J); `fast_routing` instead collects the n pairs
(map [B, J, I], vector [B, J, D]) and forms d u_hat = [B, J, n, I]^T x [B, J, n, D] in one matmul,
while autodiff differentiates the cheap remainder. This is the trick of dynamic routing's
hand-written gradient (capsrun/models/routing/dynamic.py), applied to any routing body: the
votes are read n times forward, once per small-operand gradient backward, and written once.
Why: on the 2-core development machine at batch 128 (votes [128, 10, 1152, 16], forward and
backward, 3 iterations) the autodiff forms took 641 ms (max-min), 379 ms (self-attention) and
586 ms (inverted dot-product) against 204 ms for dynamic routing's hand-written gradient; in this
form, timed round-robin by `capsrun bench` over 20 rounds on 2026-12-02, 1.02x, 0.62x and 0.99x
dynamic's time (docs/performance.md, "Routings"). The softmax over the parents has its gradient
written out for the same reason.

The body's own weights (a LayerNorm's gamma and beta, a prior) are passed as tensors, not read
as variables inside it, so that their gradients come back through the custom gradient.
"""
from typing import Callable, List, Sequence, Tuple

import tensorflow as tf

from capsrun.models.routing.base import unused_gradient


def sum_over_inputs(weights: tf.Tensor, votes: tf.Tensor) -> tf.Tensor:
    """sum_i weights[b, j, i] votes[b, j, i, :]: [B, J, I] x [B, J, I, D] -> [B, J, D]."""
    return tf.squeeze(tf.matmul(weights[:, :, None, :], votes), axis=2)


def dot_over_dims(votes: tf.Tensor, vectors: tf.Tensor) -> tf.Tensor:
    """votes[b, j, i, :] . vectors[b, j, :]: [B, J, I, D] x [B, J, D] -> [B, J, I]."""
    return tf.squeeze(tf.matmul(votes, vectors[..., None]), axis=-1)


def softmax_values(logits: tf.Tensor, leaky: bool = False) -> tf.Tensor:
    """c [B, J, I] = softmax over axis 1 (the J parents) of logits [B, J, I], as elementwise ops:
    tf.nn.softmax would transpose J to the last axis and back. `leaky`: one more parent with a
    fixed logit 0 takes part in the softmax and its share is dropped (Sabour et al.'s official
    code, `_leaky_routing`), so the J couplings of an input sum to less than 1. No gradient of
    its own: the callers write it out (`softmax_gradient`)."""
    largest = tf.reduce_max(logits, axis=1, keepdims=True)
    if leaky:
        largest = tf.maximum(largest, 0.0)
    exponentials = tf.exp(logits - largest)
    total = tf.reduce_sum(exponentials, axis=1, keepdims=True)
    return exponentials / (total + tf.exp(-largest) if leaky else total)


def softmax_gradient(coupling: tf.Tensor, upstream: tf.Tensor) -> tf.Tensor:
    """d logits = c (dc - sum_j c dc) [B, J, I]: the vector-Jacobian product of `softmax_values`
    for its output c and upstream dc (both [B, J, I]). It holds for the leaky softmax too (the
    leak's logit is a constant). Four passes over [B, J, I], where autodiff of the elementwise
    form adds a dozen (the gradient of the max, whose true value is zero, and of the division)."""
    return coupling * (upstream - tf.reduce_sum(coupling * upstream, axis=1, keepdims=True))


@tf.custom_gradient
def softmax_over_outputs(logits: tf.Tensor) -> Tuple[tf.Tensor, Callable]:
    """`softmax_values` of logits [B, J, I] with its vector-Jacobian product `softmax_gradient`."""
    coupling = softmax_values(logits)
    return coupling, lambda upstream: softmax_gradient(coupling, upstream)


def sum_of_outer_products(maps: Sequence[tf.Tensor], vectors: Sequence[tf.Tensor]) -> tf.Tensor:
    """sum_n maps[n] (x) vectors[n]: n maps [B, J, I] and n vectors [B, J, D] -> [B, J, I, D], the
    votes' gradient as ONE batched matmul [B, J, n, I]^T x [B, J, n, D] (module docstring)."""
    return tf.matmul(tf.stack(maps, axis=2), tf.stack(vectors, axis=2), transpose_a=True)


class Votes:
    """The votes u_hat [B, J, I, D] seen by a routing body: the three contractions only. Each
    contraction also takes `anchor`, a watched zero scalar, so that autodiff from the body's
    outputs reaches every contraction (also those whose operands are constants); when it passes
    a contraction's upstream gradient back, the contraction records the (map [B, J, I],
    vector [B, J, D]) pair of its outer product with the votes, for `gradient`."""

    def __init__(self, votes: tf.Tensor, anchor: tf.Tensor):
        self.votes, self.anchor = votes, anchor
        self.dtype, self.shape = votes.dtype, votes.shape
        self.pairs: List[Tuple[tf.Tensor, tf.Tensor]] = []

    def weighted_sum(self, weights: tf.Tensor) -> tf.Tensor:
        """s [B, J, D] = sum_i weights [B, J, I] u_hat."""

        @tf.custom_gradient
        def contraction(weights, anchor):
            def gradient(upstream):
                self.pairs.append((weights, upstream))
                return dot_over_dims(self.votes, upstream), tf.zeros_like(anchor)

            return sum_over_inputs(weights, self.votes), gradient

        return contraction(weights, self.anchor)

    def dot(self, vectors: tf.Tensor) -> tf.Tensor:
        """a [B, J, I] = u_hat . vectors [B, J, D]."""

        @tf.custom_gradient
        def contraction(vectors, anchor):
            def gradient(upstream):
                self.pairs.append((upstream, vectors))
                return sum_over_inputs(upstream, self.votes), tf.zeros_like(anchor)

            return dot_over_dims(self.votes, vectors), gradient

        return contraction(vectors, self.anchor)

    def mean_sum(self, scale: float) -> tf.Tensor:
        """s [B, J, D] = scale sum_i u_hat (a plain sum, no matmul)."""

        @tf.custom_gradient
        def contraction(anchor):
            def gradient(upstream):
                self.pairs.append((tf.fill(tf.shape(self.votes)[:3], tf.constant(scale, self.dtype)), upstream))
                return tf.zeros_like(anchor)

            return tf.reduce_sum(self.votes, axis=2) * tf.constant(scale, self.dtype), gradient

        return contraction(self.anchor)

    def gradient(self) -> tf.Tensor:
        """d u_hat [B, J, I, D] = the sum of the recorded outer products (`sum_of_outer_products`)."""
        maps, vectors = zip(*self.pairs)
        return sum_of_outer_products(maps, vectors)


Body = Callable[..., Tuple[tf.Tensor, tf.Tensor]]


def fast_routing(body: Body, votes: tf.Tensor, weights: Sequence[tf.Tensor] = ()) -> Tuple[tf.Tensor, tf.Tensor]:
    """(parents [B, J, D], coupling [B, J, I]) = body(Votes(votes), *weights), differentiated with
    the votes' gradient gathered as one matmul (module docstring). `body` must read the votes only
    through the Votes contractions; `weights` are tensors (read variables before the call)."""
    weights = [tf.convert_to_tensor(weight) for weight in weights]

    @tf.custom_gradient
    def routed(votes, *weights):
        anchor = tf.zeros([], votes.dtype)
        view = Votes(votes, anchor)
        with tf.GradientTape() as tape:
            tape.watch([anchor, *weights])
            parents, coupling = body(view, *weights)

        def gradient(d_parents, d_coupling):
            view.pairs = []
            # The coupling is rarely part of the loss: leaving it out of the targets then saves a
            # [B, J, I] zeros tensor and its add into the last normalisation's gradient.
            coupled = not unused_gradient(d_coupling)
            targets = [parents, coupling] if coupled else [parents]
            upstream = [tf.zeros_like(parents) if d_parents is None else d_parents]
            upstream += [d_coupling] if coupled else []
            _, *d_weights = tape.gradient(targets, [anchor, *weights], output_gradients=upstream,
                                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return (view.gradient(), *d_weights)

        return (parents, coupling), gradient

    return routed(votes, *weights)
