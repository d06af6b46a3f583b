"""Routing algorithms between two capsule layers, one module per algorithm, one interface.

Every module here defines a subclass of `capsrun.models.routing.base.RoutingLayer` (votes
[B, J, I, D] in; parent capsules [B, J, D] and coupling coefficients [B, J, I] out; the shapes
and the rules are in that module), names it `ROUTING`, and is listed in ROUTINGS below under
the name that `model.routing` selects. This module imports no TensorFlow, so that config
validation can check `model.routing` without loading it.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from capsrun.models.routing.base import RoutingLayer

ROUTINGS = {
    "dynamic": "capsrun.models.routing.dynamic",  # routing-by-agreement, Procedure 1 of Sabour et al.
    "uniform": "capsrun.models.routing.uniform",  # coupling fixed at 1/J, no agreement (the control)
    "max_min": "capsrun.models.routing.max_min",  # dynamic routing, max-min normalised coupling (Zhao et al. 2019)
    "self_attention": "capsrun.models.routing.self_attention",  # Efficient-CapsNet (Mazzia et al. 2021)
    "inverted_dot_product": "capsrun.models.routing.inverted_dot_product",  # Tsai et al. 2020, LayerNorm
}
"""`model.routing` name -> the module that implements it (imported when a model is built)."""


def get_routing(name: str) -> type[RoutingLayer]:
    """The layer class of the routing algorithm `name` (a key of ROUTINGS)."""
    if name not in ROUTINGS:
        raise ValueError(f"unknown routing '{name}'; choose one of {', '.join(ROUTINGS)}")
    return importlib.import_module(ROUTINGS[name]).ROUTING
