"""What a built model costs per image: parameters and multiply-accumulates (MACs), computed from
the layer shapes, not measured. `model_cost(model)` is what `capsrun train` records in metrics.json
and `capsrun report` and `capsrun bench` show.

A MAC is one product added to a sum (a * b + c). Counted are the contractions that dominate
the work, one forward pass of one image (so training costs about three times as much):

    Conv2D            H_out W_out K_h K_w (C_in / groups) C_out
    DepthwiseConv2D   H_out W_out K_h K_w C_in M           (M = depth multiplier)
    Dense             (product of the non-batch input axes but the last) D_in D_out
    DigitCaps votes   I J D_out D_in                      (u_hat_j|i = W_ij u_i for every i, j)
    routing           n J I D                              (n contractions of the votes, below)
    decoder           its Dense layers, once per digit of the image (num_targets)

Not counted: biases, activations, squash, softmax, normalisations, pooling and the losses
(element-wise or reductions, a few operations per value; at most a few percent of the total
for the models here). Layers without weights add nothing; a layer with weights of a type not
listed here makes the whole count unknown (None) rather than wrong.

The routing contractions (capsrun.models.routing; votes [J, I, D] per image) each cost J I D MACs:
the weighted sum s_j = sum_i c_ij u_hat_j|i, the agreement u_hat_j|i . v_j, or a plain sum of the
votes (counted alike). With r = `iterations`:

    dynamic               2r - 1   (r weighted sums, the first a plain sum; r - 1 agreements)
    max_min               2r - 1   (the same structure, max-min normalised coupling)
    uniform               1        (one sum)
    self_attention        3        (the sum of all votes, each vote's dot product with it, the
                                    weighted sum; the I x I attention matrices U U^T, which would
                                    cost J I I D, are never formed: only their row sums are used)
    inverted_dot_product  2r - 1   (r weighted sums, the first uniform; r - 1 agreements)

Shapes are those the layers were built with (Keras records them when a layer is first called;
capsrun's models are built by running one image through them).
"""
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import keras

from capsrun.models.capsnet import Decoder
from capsrun.models.layers import DigitCaps
from capsrun.models.routing.base import RoutingLayer

ROUTING_CONTRACTIONS: Dict[str, Callable[[int], int]] = {
    "dynamic": lambda iterations: 2 * iterations - 1,
    "max_min": lambda iterations: 2 * iterations - 1,
    "uniform": lambda iterations: 1,
    "self_attention": lambda iterations: 3,
    "inverted_dot_product": lambda iterations: 2 * iterations - 1,
}
"""`model.routing` name -> contractions of the votes (J I D MACs each) for `iterations`."""

FREE_LAYERS = (
    keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout, keras.layers.Activation,
    keras.layers.BatchNormalization, keras.layers.LayerNormalization, keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D,
)
"""Layers whose work is element-wise or a reduction: no MACs counted."""


class UnknownCost(ValueError):
    """A layer with weights whose type `layer_macs` does not know."""


def _input_shape(layer: keras.layers.Layer) -> Tuple[int, ...]:
    """The input shape the layer was built with, batch axis first (1 for capsrun's models)."""
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    if len(shapes) != 1:
        raise UnknownCost(f"{layer.name}: no recorded input shape (build the model first)")
    return tuple(next(iter(shapes.values())))


def _product(values) -> int:
    result = 1
    for value in values:
        result *= int(value)
    return result


def routing_macs(name: str, iterations: int, votes_shape: Tuple[int, ...]) -> int:
    """MACs of routing `name` for one image's votes: votes_shape [B, J, I, D] (B ignored)."""
    if name not in ROUTING_CONTRACTIONS:
        raise UnknownCost(f"no MAC count for routing '{name}'; add it to ROUTING_CONTRACTIONS")
    _, parents, inputs, dims = votes_shape
    return ROUTING_CONTRACTIONS[name](int(iterations)) * int(parents) * int(inputs) * int(dims)


def layer_macs(layer: keras.layers.Layer) -> int:
    """MACs per image of one layer without counting its sublayers (see the module docstring)."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        shape = _input_shape(layer)
        out = layer.compute_output_shape(shape)
        return out[1] * out[2] * _product(layer.kernel_size) * shape[-1] * layer.depth_multiplier
    if isinstance(layer, keras.layers.Conv2D):
        shape = _input_shape(layer)
        out = layer.compute_output_shape(shape)
        return out[1] * out[2] * _product(layer.kernel_size) * (shape[-1] // layer.groups) * layer.filters
    if isinstance(layer, keras.layers.Dense):
        shape = _input_shape(layer)
        return _product(shape[1:-1]) * shape[-1] * layer.units
    if isinstance(layer, DigitCaps):
        return layer.num_inputs * layer.num_capsules * layer.dim * layer.input_dim
    if isinstance(layer, RoutingLayer):
        return routing_macs(_routing_name(layer), layer.iterations, _input_shape(layer))
    if isinstance(layer, FREE_LAYERS) or not layer.weights or _sublayers(layer):
        return 0
    raise UnknownCost(f"{layer.name}: no MAC count for layers of type {type(layer).__name__}")


def _routing_name(layer: RoutingLayer) -> str:
    """The ROUTINGS name of a routing layer: its module's name (capsrun.models.routing.NAME)."""
    return type(layer).__module__.rsplit(".", 1)[-1]


def _sublayers(layer: keras.layers.Layer) -> list:
    return list(layer._flatten_layers(include_self=False, recursive=False))


def _walk(layer: keras.layers.Layer, path: str, times: int) -> Iterator[Tuple[str, int]]:
    """(layer path, MACs per image) of `layer` and every layer inside it; a routing layer is
    counted as a whole; the decoder's layers `times` times (once per digit of the image)."""
    yield path, times * layer_macs(layer)
    if isinstance(layer, RoutingLayer):
        return
    for sublayer in _sublayers(layer):
        yield from _walk(sublayer, f"{path}/{sublayer.name}", times)


def macs_by_layer(model: keras.Model) -> Dict[str, int]:
    """{layer path: MACs per image} of a built model, for every layer with MACs; raises
    UnknownCost for a weighted layer type it does not know."""
    results = {}
    for layer in _sublayers(model):
        times = int(getattr(model, "num_targets", 1)) if isinstance(layer, Decoder) else 1
        for path, macs in _walk(layer, layer.name, times):
            if macs:
                results[path] = macs
    return results


def count_macs(model: keras.Model) -> Optional[int]:
    """MACs for one image through a built model (its forward pass), or None when a layer's type
    is not known (see `layer_macs`)."""
    try:
        return sum(macs_by_layer(model).values())
    except UnknownCost:
        return None


def model_routing(model: keras.Model) -> Optional[str]:
    """The ROUTINGS name of the routing layer inside the model, or None for a model without one
    (the baseline CNN)."""
    layers = [model]
    while layers:
        layer = layers.pop(0)
        if isinstance(layer, RoutingLayer):
            return _routing_name(layer)
        layers += _sublayers(layer)
    return None


def model_cost(model: Any) -> Dict[str, Any]:
    """{"parameters": weights of the model, "macs_per_image": `count_macs`, "routing":
    `model_routing`}: the static numbers of a run, written into its metrics.json."""
    return {"parameters": int(model.count_params()), "macs_per_image": count_macs(model),
            "routing": model_routing(model)}
