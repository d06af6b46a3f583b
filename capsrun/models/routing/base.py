"""The routing interface: a Keras layer from votes to parent capsules.

    parents, coupling = routing(votes)

    votes:    float [B, J, I, D], the vote u_hat_{j|i} of every input capsule i for every
              output (parent) capsule j, in the [B, J, I, D] layout (parent before input, so that
              both contractions of an iteration are batched matrix products without transposes);
    parents:  float [B, J, D], the output capsules;
    coupling: float [B, J, I], the coupling coefficients of the last iteration (how much of
              input i went to parent j; they sum to 1 over J for softmax routings).

A routing is a layer so that an algorithm may learn weights of its own (Efficient-CapsNet's
self-attention routing learns a log-prior per input and parent); it creates them in `build`
from the votes' shape. `iterations` is `model.routing_iterations`; algorithms without
iterations ignore it. The computation stays in the votes' dtype (float32 in capsrun's models).
"""
from typing import Optional, Tuple

import keras
import numpy as np
import tensorflow as tf


class RoutingLayer(keras.layers.Layer):
    """Base class of every routing algorithm (subclasses implement `call`)."""

    def __init__(self, iterations: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.iterations = int(iterations)

    def get_config(self) -> dict:
        return {**super().get_config(), "iterations": self.iterations}

    def call(self, votes: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        raise NotImplementedError


def unused_gradient(upstream: Optional[tf.Tensor]) -> bool:
    """True when the upstream gradient of a routing output (the coupling, mostly) carries nothing:
    None, or the zeros tensor that TensorFlow's tape fills in for an output the loss does not use.

    Inside a tf.function the tape hands a custom gradient a `Fill` of 0 (a `Const` below 1,000
    elements, or a `ZerosLike`) for every unused output instead of None, so `upstream is None`
    never holds there; adding it to the coupling's gradient cost a fill and an add over
    [B, J, I] per training step (found in the traced graphs of dynamic routing and of
    `contractions.fast_routing`). An eager zeros tensor, which cannot be told from a real
    gradient without reading it, counts as used."""
    if upstream is None:
        return True
    op = getattr(upstream, "op", None)  # eager tensors have no op
    if op is None:
        return False
    if op.type == "ZerosLike":
        return True
    if op.type in ("Fill", "Const"):
        value = tf.get_static_value(op.inputs[1] if op.type == "Fill" else upstream)
        return value is not None and not np.any(value)
    return False
