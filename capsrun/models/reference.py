"""A CapsNet written the plain way: the benchmark's reference and the fast path's test oracle.

Same layers, parameters (8,215,568 by default) and loss as capsrun.models.capsnet.CapsNet; only the
digit capsule layer is computed the way most public CapsNet code computes it:
- prediction vectors: the inputs tiled over the J digit capsules and W broadcast against them
  in one tf.matmul, [1, I, J, D, K] x [B, I, J, K, 1] -> u_hat [B, I, J, D, 1];
- routing: softmax, multiply and reduce_sum as separate ops on u_hat-sized tensors, the
  agreement as v tiled over the I primary capsules and another tf.matmul; autodiff gradients.
`ReferenceCapsNet.copy_weights(capsnet)` makes it compute the same function as a CapsNet.
Shapes: B batch, I primary capsules (1152 on MNIST), J classes, K = 8 and D = 16 capsule sizes.

The plain forms of the routings (`plain_route(name, layer, votes)`, `PLAIN_ROUTINGS`): each
routing of capsrun.models.routing written the straightforward way, as its equations read, with
TensorFlow's autodiff as the only gradient (tf.nn.softmax, broadcast products and reduce_sum
where the layers use batched matmuls, elementwise softmaxes and one-matmul gradients). They are
the oracles of the layers' fast forms in the tests and their baseline in `capsrun bench`.
Shapes: votes u_hat [B, J, I, D] -> (parents [B, J, D], coupling [B, J, I]), in the votes' dtype.
"""
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from capsrun.models.base import CAPSULES, RECONSTRUCTIONS, SCORES, InputSpec
from capsrun.models.capsnet import CapsNet
from capsrun.models.layers import W_STDDEV
from capsrun.models.losses import CapsuleLoss
from capsrun.models.ops import EPSILON, top_labels
from capsrun.models.routing.inverted_dot_product import LAYER_NORM_EPSILON
from capsrun.models.routing.max_min import LOWER_BOUND, UPPER_BOUND
from capsrun.models.routing.self_attention import SQUASHES


def plain_squash(vectors: tf.Tensor, axis: int = -1) -> tf.Tensor:
    """squash (eq. 1) as found in public code: norm, factor and unit vector separately; any shape."""
    squared_norm = tf.reduce_sum(tf.square(vectors), axis=axis, keepdims=True)
    norm = tf.sqrt(squared_norm + EPSILON)
    return squared_norm / (1.0 + squared_norm) * (vectors / norm)


class PlainDigitCaps(keras.layers.Layer):
    """u float32 [B, I, K] -> v float32 [B, J, D]; weights W [I, J, D, K] as in DigitCaps."""

    def __init__(self, num_capsules: int, dim: int, routing_iterations: int, **kwargs):
        super().__init__(**kwargs)
        self.num_capsules, self.dim, self.routing_iterations = num_capsules, dim, routing_iterations

    def build(self, input_shape: tuple) -> None:
        self.num_inputs, self.input_dim = int(input_shape[1]), int(input_shape[2])
        self.kernel = self.add_weight(
            name="W", shape=(self.num_inputs, self.num_capsules, self.dim, self.input_dim),
            initializer=keras.initializers.RandomNormal(stddev=W_STDDEV), dtype="float32",
        )

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        batch = tf.shape(inputs)[0]
        tiled = tf.tile(inputs[:, :, None, :, None], [1, 1, self.num_capsules, 1, 1])  # [B, I, J, K, 1]
        predictions = tf.matmul(self.kernel[None], tiled)  # [B, I, J, D, 1]
        capsules, _ = _plain_agreement(predictions, self.routing_iterations)
        return tf.reshape(capsules, [batch, self.num_capsules, self.dim])


def _plain_agreement(predictions: tf.Tensor, iterations: int) -> Tuple[tf.Tensor, tf.Tensor]:
    """Procedure 1 of Sabour et al. on u_hat [B, I, J, D, 1] as public code writes it: softmax,
    multiply and reduce_sum as separate ops, the agreement as v tiled over the I inputs and a
    tf.matmul. Returns (v [B, 1, J, D, 1], c [B, I, J, 1, 1] of the last iteration)."""
    num_inputs = predictions.shape[1]
    logits = tf.zeros_like(predictions[:, :, :, :1, :])  # [B, I, J, 1, 1]
    for iteration in range(iterations):
        coupling = tf.nn.softmax(logits, axis=2)
        weighted = tf.reduce_sum(coupling * predictions, axis=1, keepdims=True)  # [B, 1, J, D, 1]
        capsules = plain_squash(weighted, axis=-2)
        if iteration < iterations - 1:
            tiled_capsules = tf.tile(capsules, [1, num_inputs, 1, 1, 1])  # [B, I, J, D, 1]
            logits = logits + tf.matmul(predictions, tiled_capsules, transpose_a=True)
    return capsules, coupling


def plain_dynamic_routing(votes: tf.Tensor, iterations: int) -> Tuple[tf.Tensor, tf.Tensor]:
    """Routing-by-agreement (model.routing=dynamic) the way of PlainDigitCaps: the votes
    [B, J, I, D] transposed to the paper's [B, I, J, D, 1], then `_plain_agreement`."""
    capsules, coupling = _plain_agreement(tf.transpose(votes, [0, 2, 1, 3])[..., None], iterations)
    return tf.squeeze(capsules, axis=[1, 4]), tf.transpose(tf.squeeze(coupling, axis=[3, 4]), [0, 2, 1])


def _weighted_sum(coupling: tf.Tensor, votes: tf.Tensor) -> tf.Tensor:
    """s_j = sum_i c_ij u_hat_j|i as a broadcast product and a sum: c [B, J, I] -> [B, J, D]."""
    return tf.reduce_sum(coupling[..., None] * votes, axis=2)


def _agreement(votes: tf.Tensor, parents: tf.Tensor) -> tf.Tensor:
    """u_hat_j|i . p_j as a broadcast product and a sum: p [B, J, D] -> [B, J, I]."""
    return tf.reduce_sum(votes * parents[:, :, None, :], axis=-1)


def plain_uniform_routing(votes: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """model.routing=uniform: c = softmax(0) over the parents = 1 / J, v = squash(sum_i c u_hat)."""
    coupling = tf.nn.softmax(tf.zeros_like(votes[..., 0]), axis=1)
    return plain_squash(_weighted_sum(coupling, votes)), coupling


def plain_max_min_routing(votes: tf.Tensor, iterations: int, renormalize: bool = True) -> Tuple[tf.Tensor, tf.Tensor]:
    """model.routing=max_min: b = 0; r times c = lb + (ub - lb) (b - min_j b) / max(max_j b -
    min_j b, EPSILON) (renormalize: then c / sum_j c), v = squash(sum_i c u_hat), b += u_hat . v
    (not after the last)."""
    logits = tf.zeros_like(votes[..., 0])
    for iteration in range(iterations):
        smallest = tf.reduce_min(logits, axis=1, keepdims=True)
        spread = tf.maximum(tf.reduce_max(logits, axis=1, keepdims=True) - smallest, EPSILON)
        coupling = LOWER_BOUND + (UPPER_BOUND - LOWER_BOUND) * (logits - smallest) / spread
        if renormalize:
            coupling = coupling / tf.reduce_sum(coupling, axis=1, keepdims=True)
        parents = plain_squash(_weighted_sum(coupling, votes))
        if iteration < iterations - 1:
            logits = logits + _agreement(votes, parents)
    return parents, coupling


def plain_self_attention_routing(votes: tf.Tensor, log_prior: tf.Tensor,
                                 squash: str = "paper") -> Tuple[tf.Tensor, tf.Tensor]:
    """model.routing=self_attention: a_ij = sum_k u_hat_j|i . u_hat_j|k / sqrt(D) (each vote's
    agreement with the sum of all votes for its parent: the row sums of the I x I matrices, which
    at batch 128 would take 6.8 GB, so they are not formed; tests/unit/models/
    test_routing_self_attention.py checks the I x I form in NumPy), c = softmax_j(a) + b [J, I],
    v = squash(sum_i c u_hat)."""
    total = tf.reduce_sum(votes, axis=2)  # [B, J, D]
    agreement = _agreement(votes, total) / tf.sqrt(tf.cast(votes.shape[-1], votes.dtype))
    coupling = tf.nn.softmax(agreement, axis=1) + log_prior
    return SQUASHES[squash](_weighted_sum(coupling, votes)), coupling


def plain_inverted_dot_product_routing(votes: tf.Tensor, iterations: int, gamma: tf.Tensor,
                                       beta: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """model.routing=inverted_dot_product: p = 0; t times a = u_hat . p / sqrt(D), r = softmax_j(a),
    p = gamma (s - mean(s)) / sqrt(var(s) + 1e-5) + beta with s = sum_i r u_hat (gamma, beta [D]);
    the first round is computed from p = 0 like the others."""
    parents = tf.zeros_like(votes[:, :, 0, :])
    for _ in range(iterations):
        agreement = _agreement(votes, parents) / tf.sqrt(tf.cast(votes.shape[-1], votes.dtype))
        coupling = tf.nn.softmax(agreement, axis=1)
        poses = _weighted_sum(coupling, votes)
        mean, variance = tf.nn.moments(poses, axes=[-1], keepdims=True)
        parents = gamma * (poses - mean) / tf.sqrt(variance + LAYER_NORM_EPSILON) + beta
    return parents, coupling


PLAIN_ROUTINGS: Dict[str, Callable[[Any, tf.Tensor], Tuple[tf.Tensor, tf.Tensor]]] = {
    "dynamic": lambda layer, votes: plain_dynamic_routing(votes, layer.iterations),
    "uniform": lambda layer, votes: plain_uniform_routing(votes),
    "max_min": lambda layer, votes: plain_max_min_routing(votes, layer.iterations, layer.renormalize),
    "self_attention": lambda layer, votes: plain_self_attention_routing(
        votes, tf.cast(layer.log_prior, votes.dtype), layer.squash),
    "inverted_dot_product": lambda layer, votes: plain_inverted_dot_product_routing(
        votes, layer.iterations, tf.cast(layer.layer_norm.gamma, votes.dtype),
        tf.cast(layer.layer_norm.beta, votes.dtype)),
}
"""`model.routing` name -> plain form(routing layer, votes): the layer's settings and weights,
the equations computed plainly. One entry per name of capsrun.models.routing.ROUTINGS."""


def plain_route(name: str, layer: Any, votes: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """(parents [B, J, D], coupling [B, J, I]) of the built routing layer `layer` (of routing
    `name`) on votes [B, J, I, D], computed by its plain form with autodiff gradients."""
    if name not in PLAIN_ROUTINGS:
        raise ValueError(f"no plain form of routing '{name}'; add one to PLAIN_ROUTINGS")
    return PLAIN_ROUTINGS[name](layer, votes)


class ReferenceCapsNet(keras.Model):
    """The reference network, on the model contract: call(images [B, H, W, C], labels int [B] or
    None) -> {"capsules": [B, J, D], "scores": lengths [B, J], "reconstructions": [B, H, W, C]};
    the decoder sees the capsule of `labels`, else of the predicted class. One label per image."""

    def __init__(self, image_shape: Sequence[int] = (28, 28, 1), num_classes: int = 10, conv1_filters: int = 256,
                 conv1_kernel: int = 9, primary_maps: int = 32, primary_dim: int = 8, primary_kernel: int = 9,
                 primary_strides: int = 2, digit_dim: int = 16, routing_iterations: int = 3,
                 decoder_units: Sequence[int] = (512, 1024), loss: Optional[CapsuleLoss] = None, **kwargs):
        super().__init__(**kwargs)
        self.loss_fn = loss or CapsuleLoss()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes, self.num_targets, self.primary_dim = int(num_classes), 1, primary_dim
        self.conv1 = keras.layers.Conv2D(conv1_filters, conv1_kernel, activation="relu", name="conv1")
        self.primary_conv = keras.layers.Conv2D(primary_maps * primary_dim, primary_kernel,
                                                strides=primary_strides, name="primary_conv")
        self.digit_caps = PlainDigitCaps(self.num_classes, digit_dim, routing_iterations, dtype="float32",
                                         name="digit_caps")
        pixels = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        self.decoder_layers = [keras.layers.Dense(units, activation="relu", name=f"fc{index + 1}")
                               for index, units in enumerate(decoder_units)]
        self.decoder_layers.append(keras.layers.Dense(pixels, activation="sigmoid", name="pixels"))

    def build_for_inputs(self) -> None:
        """Creates all weights by running one zero image through the network."""
        self(tf.zeros([1, *self.image_shape]), training=False)

    def copy_weights(self, capsnet: CapsNet) -> None:
        """Assigns the weights of a built capsrun CapsNet of the same sizes to this network."""
        targets = [*self.conv1.weights, *self.primary_conv.weights, *self.digit_caps.weights]
        targets += [weight for layer in self.decoder_layers for weight in layer.weights]
        sources = [*capsnet.conv1.weights, *capsnet.primary_caps.conv.weights, *capsnet.digit_caps.weights,
                   *capsnet.decoder.weights]
        for target, source in zip(targets, sources, strict=True):
            if target.shape != source.shape:
                raise ValueError(f"cannot copy {source.path} {source.shape} to {target.path} {target.shape}")
            target.assign(source)

    def predict_labels(self, scores: tf.Tensor) -> tf.Tensor:
        """The predicted class int32 [B]."""
        return top_labels(scores, 1)

    def compute_losses(self, outputs: Dict[str, tf.Tensor], labels: tf.Tensor,
                       targets: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Per-example float32 [B] `margin`, `reconstruction` and `total` losses (as CapsNet's)."""
        return self.loss_fn(outputs[SCORES], labels, targets, outputs[RECONSTRUCTIONS])

    def call(self, images: tf.Tensor, labels: tf.Tensor = None, training: bool = False) -> Dict[str, tf.Tensor]:
        features = self.primary_conv(self.conv1(tf.cast(images, self.compute_dtype)))
        primary = plain_squash(tf.cast(tf.reshape(features, [tf.shape(features)[0], -1, self.primary_dim]),
                                       tf.float32))
        capsules = self.digit_caps(primary)
        lengths = tf.sqrt(tf.reduce_sum(tf.square(capsules), axis=-1) + EPSILON)
        if labels is None:
            labels = self.predict_labels(lengths)
        masked = capsules * tf.one_hot(labels, self.num_classes)[:, :, None]
        hidden = tf.reshape(masked, [tf.shape(masked)[0], -1])
        for layer in self.decoder_layers:
            hidden = layer(hidden)
        reconstructions = tf.reshape(tf.cast(hidden, tf.float32), [-1, *self.image_shape])
        return {CAPSULES: capsules, SCORES: lengths, RECONSTRUCTIONS: reconstructions}


def build_reference(model_cfg: Any, loss_cfg: Any, spec: InputSpec) -> ReferenceCapsNet:
    """A built ReferenceCapsNet for the `model` and `loss` config groups of a CapsNet."""
    model = ReferenceCapsNet(
        image_shape=spec.image_shape, num_classes=spec.num_classes, conv1_filters=model_cfg.conv1_filters,
        conv1_kernel=model_cfg.conv1_kernel, primary_maps=model_cfg.primary_maps,
        primary_dim=model_cfg.primary_dim, primary_kernel=model_cfg.primary_kernel,
        primary_strides=model_cfg.primary_strides, digit_dim=model_cfg.digit_dim,
        routing_iterations=model_cfg.routing_iterations, decoder_units=tuple(model_cfg.decoder_units),
        loss=CapsuleLoss.from_config(loss_cfg), name="reference_capsnet",
    )
    model.build_for_inputs()
    return model
