"""Routing algorithms between two capsule layers, one module per algorithm, one interface.

Every module here defines

    route(votes, iterations) -> (parents, coupling)

    votes:     float32 [B, J, I, D], the vote u_hat_{j|i} of every input capsule i for every
               output (parent) capsule j, in the [B, J, I, D] layout (parent before input, so
               both contractions of an iteration are batched matrix products without transposes);
    iterations: routing iterations r >= 1 (algorithms without iterations ignore it);
    parents:   float32 [B, J, D], the output capsules;
    coupling:  float32 [B, J, I], the coupling coefficients of the last iteration (how much of
               input i went to parent j).

and is listed in ROUTINGS under the name that `model.routing` selects. This module imports no
TensorFlow, so that config validation can check `model.routing` without loading it.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol, Tuple

if TYPE_CHECKING:
    import tensorflow as tf

ROUTINGS = {
    "dynamic": "capsrun.models.routing.dynamic",  # routing-by-agreement, Procedure 1 of Sabour et al.
}
"""`model.routing` name -> the module that implements it (imported when a model is built)."""


class Routing(Protocol):
    """The interface of a routing algorithm (see the module docstring for the shapes)."""

    def __call__(self, votes: tf.Tensor, iterations: int) -> Tuple[tf.Tensor, tf.Tensor]: ...


def get_routing(name: str) -> Routing:
    """The `route` function of the routing algorithm `name` (a key of ROUTINGS)."""
    if name not in ROUTINGS:
        raise ValueError(f"unknown routing '{name}'; choose one of {', '.join(ROUTINGS)}")
    return importlib.import_module(ROUTINGS[name]).route
