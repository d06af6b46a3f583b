"""A CapsNet written the plain way: the benchmark's reference and the fast path's test oracle.

Same layers, parameters (8,215,568 by default) and loss as capsrun.models.capsnet.CapsNet; only the
digit capsule layer is computed the way most public CapsNet code computes it:
- prediction vectors: the inputs tiled over the J digit capsules and W broadcast against them
  in one tf.matmul, [1, I, J, D, K] x [B, I, J, K, 1] -> u_hat [B, I, J, D, 1];
- routing: softmax, multiply and reduce_sum as separate ops on u_hat-sized tensors, the
  agreement as v tiled over the I primary capsules and another tf.matmul; autodiff gradients.
`ReferenceCapsNet.copy_weights(capsnet)` makes it compute the same function as a CapsNet.
Shapes: B batch, I primary capsules (1152 on MNIST), J classes, K = 8 and D = 16 capsule sizes.
"""
from typing import Any, Dict, Optional, Sequence

import keras
import tensorflow as tf

from capsrun.models.base import CAPSULES, RECONSTRUCTIONS, SCORES, InputSpec
from capsrun.models.capsnet import CapsNet
from capsrun.models.layers import W_STDDEV
from capsrun.models.losses import CapsuleLoss
from capsrun.models.ops import EPSILON, top_labels


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
        logits = tf.zeros([batch, self.num_inputs, self.num_capsules, 1, 1])
        for iteration in range(self.routing_iterations):
            coupling = tf.nn.softmax(logits, axis=2)
            weighted = tf.reduce_sum(coupling * predictions, axis=1, keepdims=True)  # [B, 1, J, D, 1]
            capsules = plain_squash(weighted, axis=-2)
            if iteration < self.routing_iterations - 1:
                tiled_capsules = tf.tile(capsules, [1, self.num_inputs, 1, 1, 1])  # [B, I, J, D, 1]
                logits = logits + tf.matmul(predictions, tiled_capsules, transpose_a=True)
        return tf.reshape(capsules, [batch, self.num_capsules, self.dim])


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
