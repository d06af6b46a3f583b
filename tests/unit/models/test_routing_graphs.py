"""Routing gradients inside a tf.function, where TensorFlow's tape hands every custom gradient a
zeros tensor (not None) for an output the loss does not use: the routings skip it, and still use
the coupling's gradient when the loss reads the coupling."""
import numpy as np
import pytest
import tensorflow as tf

from capsrun.models.routing import ROUTINGS
from capsrun.models.routing.base import unused_gradient
from tests.unit.models.routing_checks import make_layer, make_votes, randomize_weights

ITERATIVE = [name for name in ROUTINGS if name not in ("uniform", "self_attention")]


def traced_step(layer, votes, coupling_weight):
    """The concrete graph of d loss / d votes, loss = sum(parents^2) (+ coupling_weight * coupling)."""
    @tf.function
    def step(votes):
        with tf.GradientTape() as tape:
            tape.watch(votes)
            parents, coupling = layer(votes)
            loss = tf.reduce_sum(tf.square(parents))
            if coupling_weight is not None:
                loss += tf.reduce_sum(coupling_weight * coupling)
        return tape.gradient(loss, votes)

    return step, step.get_concrete_function(tf.TensorSpec(votes.shape, votes.dtype)).graph


def zero_fills_added(graph, shape):
    """Adds in `graph` with an input that is the tape's zeros of `shape` for an unused output (a
    Fill of 0, or a Const of zeros for small shapes like these)."""
    found = []
    for op in graph.get_operations():
        if op.type in ("Add", "AddV2", "AddN"):
            for tensor in op.inputs:
                if tensor.shape.as_list() == list(shape) and unused_gradient(tensor):
                    found.append(op.name)
    return found


@pytest.mark.parametrize("name", ITERATIVE)
def test_unused_coupling_gradient_is_not_added(name):
    votes = tf.constant(make_votes(seed=1))
    layer = make_layer(name, 3)
    _, graph = traced_step(layer, votes, None)
    assert zero_fills_added(graph, votes.shape[:3]) == []


@pytest.mark.parametrize("name", ITERATIVE)
def test_used_coupling_gradient_still_flows_in_a_graph(name):
    votes = tf.constant(make_votes(seed=1))
    layer = make_layer(name, 3)
    randomize_weights(layer, seed=3, scale=0.1)
    weight = tf.constant(np.random.default_rng(5).normal(size=votes.shape[:3]))
    step, _ = traced_step(layer, votes, weight)
    with tf.GradientTape() as tape:  # eager: no zero fills, the reference
        tape.watch(votes)
        parents, coupling = layer(votes)
        loss = tf.reduce_sum(tf.square(parents)) + tf.reduce_sum(weight * coupling)
    eager = tape.gradient(loss, votes).numpy()
    without_coupling, _ = traced_step(layer, votes, None)
    np.testing.assert_allclose(step(votes).numpy(), eager, rtol=1e-9, atol=1e-12)
    assert np.abs(without_coupling(votes).numpy() - eager).max() > 1e-3  # the coupling's term counts


def test_unused_gradient_tells_tape_zeros_from_gradients():
    assert unused_gradient(None)
    assert not unused_gradient(tf.zeros([2, 3]))  # eager: cannot be told without reading it

    @tf.function
    def check(x):
        return [unused_gradient(tensor) for tensor in (
            tf.zeros([40, 50]), tf.zeros([4, 5]), tf.zeros_like(x), tf.fill([40, 50], 1.0), tf.ones([4, 5]), x * 2.0)]

    assert check(tf.ones([4, 5])) == [True, True, True, False, False, False]
