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
from typing import Tuple

import keras
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
