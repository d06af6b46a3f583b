"""Efficient-CapsNet (Mazzia, Salvetti & Chiaberge 2021, "Efficient-CapsNet: capsule network
with self-attention routing", Scientific Reports 11), the MNIST network:

    images [B, 28, 28, 1]
    -> 4 x (valid convolution, ReLU, batch norm)   [B, 24, 24, 32] [B, 22, 22, 64] [B, 20, 20, 64] [B, 9, 9, 128]
    -> depthwise 9x9 convolution, grouped into capsules, their squash       u [B, 16, 8]
    -> votes W u, self-attention routing, their squash                     v [B, 10, 16]
    -> lengths |v| (scores [B, 10]); masked decoder 160 -> 512 -> 1024 -> 784 (reconstructions)

Checked against the authors' code, github.com/EscVM/Efficient-CapsNet:
models/efficient_capsnet_graph_mnist.py and utils/layers.py. The convolutions are Conv2D
32@5x5, 64@3x3, 64@3x3 and 128@3x3 stride 2, all 'valid', ReLU, he_normal, each FOLLOWED by
BatchNormalization (Keras defaults: momentum 0.99, epsilon 1e-3), in that order (ReLU before
the norm). PrimaryCaps(F=128, K=9, N=16, D=8, s=1) is a Conv2D with groups=128, i.e. a
depthwise convolution with one kernel per channel, linear, with a bias, reshaped to 16 capsules
of 8 and squashed with their Squash. FCCaps(10, 16) holds W [10, 16, 8, 16] (he_normal, no
bias) and the prior b [10, 16, 1], and routes by self-attention
(`capsrun.models.routing.self_attention`, which documents the equations) with their Squash.
The generator is Dense 512 and 1024 (ReLU, he_normal) and 784 (sigmoid, glorot_normal) on the
160 masked capsule numbers; it is masked by the true label when training (their `Mask()([caps,
y_true])` in mode 'train') and by the longest capsule at test (`Mask()(caps)` in mode 'test'),
exactly as capsrun's CapsNet does, so the masking, decoder and losses are shared with it
(`capsrun.models.capsnet.CapsuleNetwork`).

Parameter count on MNIST (trainable, the paper's 161,824, Table 2 "161K"):

    conv1   5*5*1*32 + 32    =     832    bn1 gamma+beta 2*32  =  64
    conv2   3*3*32*64 + 64   =  18,496    bn2            2*64  = 128
    conv3   3*3*64*64 + 64   =  36,928    bn3            2*64  = 128
    conv4   3*3*64*128 + 128 =  73,856    bn4            2*128 = 256
    primary depthwise 9*9*128 + 128   =  10,496
    digit W 16*10*16*8 = 20,480; self-attention prior b 10*16 = 160
    -------------------------------------------------------------
    130,112 + 576 + 10,496 + 20,480 + 160 = 161,824 trainable

The batch norms also hold moving means and variances (2 * 288 = 576 numbers, not trainable):
Keras' summary of the authors' model counts 162,400 in all, 161,824 of them trainable, so the
paper's number is the trainable count (BN scales and offsets in, moving statistics out).
The decoder adds 160*512 + 512 = 82,432, 512*1024 + 1024 = 525,312 and 1024*784 + 784 =
803,600, i.e. 1,411,344 (the same decoder as CapsNet's): 1,573,168 trainable in all.

For other image sizes the primary capsules are every position of the depthwise convolution's
output: [B, H' * W' * F / D, D] with F the channels of the last convolution (CIFAR-10 32x32x3:
3 * 3 * 16 = 144 capsules); the authors' code assumes H' = W' = 1.

Batch norm under tf.distribute: `synchronized=True` computes the mean and variance over the
GLOBAL batch (an all-reduce across replicas), so that one step on N replicas is the step on one
device (the model's gradients are those of the whole batch, as capsrun's trainer requires); on
one device it is the ordinary batch norm.
"""
from typing import Any, Optional, Sequence, Union

import keras
import tensorflow as tf

from capsrun.errors import CapsrunError
from capsrun.models.base import InputSpec
from capsrun.models.capsnet import CapsuleNetwork, Decoder
from capsrun.models.layers import DigitCaps
from capsrun.models.losses import CapsuleLoss
from capsrun.models.routing.self_attention import efficient_squash

BN_MOMENTUM, BN_EPSILON = 0.99, 1e-3
"""Keras' BatchNormalization defaults, which the authors' code uses (it passes no arguments)."""

DIGIT_W_INITIALIZER = {"class_name": "VarianceScaling",
                       "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"}}
"""The authors' he_normal for W. They store W as [J, I, D_in, D_out], whose Keras fan-in is
D_in * J * I (1,280 on MNIST: stddev sqrt(2 / 1280) = 0.040); capsrun stores it as
[I, J, D_out, D_in], whose Keras fan-OUT is that same D_in * J * I. So fan_out here draws the
numbers of the authors' he_normal (VarianceScaling(2, fan_in, truncated normal) in their layout)."""


def conv_output_size(size: int, kernel: int, stride: int) -> int:
    """Side of a 'valid' convolution's output: floor((size - kernel) / stride) + 1 (0 if too small)."""
    return max((size - kernel) // stride + 1, 0)


@keras.saving.register_keras_serializable(package="capsrun")
class ConvBatchNormStack(keras.layers.Layer):
    """Convolutions (valid padding, ReLU, he_normal), each followed by batch normalisation.

    Input: images [B, H, W, C]. Output: features [B, H_n, W_n, filters[-1]], where each layer
    maps a side s to floor((s - kernels[i]) / strides[i]) + 1 (MNIST: 28 -> 24 -> 22 -> 20 -> 9).
    Weights of layer i: kernel [k_i, k_i, C_{i-1}, F_i] and bias [F_i]; its batch norm holds
    gamma, beta (trainable) and the moving mean and variance (not trainable), each [F_i].
    `training` selects batch statistics (and updates the moving ones) or the moving statistics.
    """

    def __init__(self, filters: Sequence[int], kernels: Sequence[int], strides: Sequence[int], **kwargs):
        super().__init__(**kwargs)
        if not len(filters) == len(kernels) == len(strides):
            raise ValueError("filters, kernels and strides need one entry per convolution")
        self.filters = tuple(int(f) for f in filters)
        self.kernels = tuple(int(k) for k in kernels)
        self.strides = tuple(int(s) for s in strides)
        # Layers are attributes, not a list: tf.train.Checkpoint does not follow Keras' lists.
        self.depth = len(self.filters)
        for index, (width, kernel, stride) in enumerate(zip(self.filters, self.kernels, self.strides), start=1):
            setattr(self, f"conv{index}", keras.layers.Conv2D(
                width, kernel, strides=stride, padding="valid", activation="relu", kernel_initializer="he_normal",
                name=f"conv{index}"))
            setattr(self, f"bn{index}", keras.layers.BatchNormalization(
                momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=True, name=f"bn{index}"))

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": list(self.filters), "kernels": list(self.kernels),
                "strides": list(self.strides)}

    def call(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        features = images
        for index in range(1, self.depth + 1):
            features = getattr(self, f"bn{index}")(getattr(self, f"conv{index}")(features), training=training)
        return features


@keras.saving.register_keras_serializable(package="capsrun")
class DepthwisePrimaryCaps(keras.layers.Layer):
    """Efficient-CapsNet's primary capsules: a depthwise convolution (one k x k kernel and a bias
    per channel, linear), its channels grouped into capsules of `dim`, then their squash
    (1 - e^-|s|) s / |s|.

    Input: features [B, H, W, F] (F divisible by dim). Output: float32 capsules
    [B, H' * W' * F / dim, dim], ordered (row, column, capsule); MNIST: [B, 9, 9, 128] -> [B, 16, 8].
    Weights: depthwise kernel [k, k, F, 1] and bias [F] (k = 9, F = 128: 10,368 + 128 = 10,496).
    """

    def __init__(self, dim: int, kernel_size: int, strides: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.kernel_size, self.strides = int(dim), int(kernel_size), int(strides)
        self.conv = keras.layers.DepthwiseConv2D(self.kernel_size, strides=self.strides, padding="valid",
                                                 name="depthwise")

    def get_config(self) -> dict:
        return {**super().get_config(), "dim": self.dim, "kernel_size": self.kernel_size, "strides": self.strides}

    def call(self, features: tf.Tensor) -> tf.Tensor:
        maps = self.conv(features)
        count = maps.shape[1] * maps.shape[2] * maps.shape[3] // self.dim
        return efficient_squash(tf.reshape(tf.cast(maps, tf.float32), [-1, count, self.dim]))


@keras.saving.register_keras_serializable(package="capsrun")
class EfficientCapsNet(CapsuleNetwork):
    """Efficient-CapsNet with its reconstruction decoder; fulfils `capsrun.models.base.CapsuleModel`
    (the interface and outputs are `CapsuleNetwork`'s, the layers and their shapes are in the
    module docstring). `routing` / `routing_squash` choose the routing between the primary and
    the class capsules and its squash (the paper: self_attention with the efficient squash)."""

    def __init__(
        self,
        image_shape: Sequence[int] = (28, 28, 1),
        num_classes: int = 10,
        conv_filters: Sequence[int] = (32, 64, 64, 128),
        conv_kernels: Sequence[int] = (5, 3, 3, 3),
        conv_strides: Sequence[int] = (1, 1, 1, 2),
        primary_dim: int = 8,
        primary_kernel: int = 9,
        primary_strides: int = 1,
        digit_dim: int = 16,
        routing_iterations: int = 3,
        decoder_units: Sequence[int] = (512, 1024),
        num_targets: int = 1,
        routing: str = "self_attention",
        routing_squash: str = "efficient",
        loss: Optional[Union[CapsuleLoss, dict]] = None,
        **kwargs,
    ):
        super().__init__(image_shape, num_classes, num_targets, loss, **kwargs)
        self.settings = {
            "conv_filters": [int(f) for f in conv_filters], "conv_kernels": [int(k) for k in conv_kernels],
            "conv_strides": [int(s) for s in conv_strides], "primary_dim": int(primary_dim),
            "primary_kernel": int(primary_kernel), "primary_strides": int(primary_strides),
            "digit_dim": int(digit_dim), "routing_iterations": int(routing_iterations),
            "decoder_units": [int(u) for u in decoder_units], "routing": str(routing),
            "routing_squash": str(routing_squash),
        }
        check_sizes(self.image_shape, conv_filters, conv_kernels, conv_strides, primary_dim, primary_kernel,
                    primary_strides)
        self.features = ConvBatchNormStack(conv_filters, conv_kernels, conv_strides, name="features")
        self.primary_caps = DepthwisePrimaryCaps(primary_dim, primary_kernel, primary_strides, name="primary_caps")
        self.digit_caps = DigitCaps(
            self.num_classes, digit_dim, routing_iterations, routing=routing, routing_squash=routing_squash,
            kernel_initializer=DIGIT_W_INITIALIZER, dtype="float32", name="digit_caps")
        self.decoder = Decoder(decoder_units, self.image_shape, hidden_initializer="he_normal",
                               output_initializer="glorot_normal", name="decoder")

    def primary_capsules(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Primary capsules u [B, I, K] for images [B, H, W, C]; `training` switches the batch
        norms to batch statistics (and updates their moving statistics)."""
        return self.primary_caps(self.features(tf.cast(images, self.compute_dtype), training=training))


def check_sizes(image_shape: Sequence[int], filters: Sequence[int], kernels: Sequence[int],
                strides: Sequence[int], primary_dim: int, primary_kernel: int, primary_strides: int) -> None:
    """Raises CapsrunError (one line, with the fix) when the images are too small for the
    convolutions or the last one's channels do not split into capsules of primary_dim."""
    if not len(filters) == len(kernels) == len(strides) >= 1:
        raise CapsrunError("model.efficient_conv_filters, efficient_conv_kernels and efficient_conv_strides "
                           f"need the same number (>= 1) of entries; got {len(filters)}, {len(kernels)}, "
                           f"{len(strides)}")
    if filters[-1] % primary_dim:
        raise CapsrunError(f"model=efficient_capsnet: the last convolution's {filters[-1]} channels do not split into "
                           f"primary capsules of model.primary_dim={primary_dim}; choose a divisor")
    sides = [int(image_shape[0]), int(image_shape[1])]
    for kernel, stride in [*zip(kernels, strides), (primary_kernel, primary_strides)]:
        sides = [conv_output_size(side, kernel, stride) for side in sides]
    if min(sides) < 1:
        raise CapsrunError(f"model=efficient_capsnet: images of {image_shape[0]}x{image_shape[1]} are too small for "
                           "its convolutions; use larger images (data.image_size or data.canvas_size) or smaller "
                           "model.efficient_conv_kernels / model.primary_kernel")


def build(model_cfg: Any, loss_cfg: Any, spec: InputSpec) -> EfficientCapsNet:
    """A built Efficient-CapsNet for the `model` and `loss` config groups and the data's InputSpec."""
    model = EfficientCapsNet(
        image_shape=spec.image_shape,
        num_classes=spec.num_classes,
        conv_filters=tuple(model_cfg.efficient_conv_filters),
        conv_kernels=tuple(model_cfg.efficient_conv_kernels),
        conv_strides=tuple(model_cfg.efficient_conv_strides),
        primary_dim=model_cfg.primary_dim,
        primary_kernel=model_cfg.primary_kernel,
        primary_strides=model_cfg.primary_strides,
        digit_dim=model_cfg.digit_dim,
        routing_iterations=model_cfg.routing_iterations,
        decoder_units=tuple(model_cfg.decoder_units),
        num_targets=spec.num_targets,
        routing=model_cfg.routing,
        routing_squash=model_cfg.routing_squash,
        loss=CapsuleLoss.from_config(loss_cfg),
        name="efficient_capsnet",
    )
    model.build_for_inputs()
    return model
