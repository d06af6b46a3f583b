"""Capsule layers: primary capsules and fully connected capsules with a pluggable routing.

Shapes (alphabet in `capsrun.models`): B batch, I primary capsules (1152 for 28x28 MNIST),
J digit capsules (one per class), D_in / D_out capsule dimensions. All capsule arithmetic runs in
float32, also under a mixed-precision policy.
"""
import keras
import tensorflow as tf

from capsrun.models.ops import squash
from capsrun.models.routing import get_routing

W_STDDEV = 0.1
"""Initial spread of the digit-capsule weights W. With 0.01 the initial digit capsules are so
short that their gradients fall below Adam's epsilon and the full model stays at chance for the
first epoch (measured: 7.8% validation accuracy after 25 steps of batch 128, against 73% with 0.1)."""


@keras.saving.register_keras_serializable(package="capsrun")
class PrimaryCaps(keras.layers.Layer):
    """A convolution whose output channels are grouped into capsules, then squashed.

    Input: feature maps [B, H, W, C]. Output: float32 capsules [B, H' * W' * maps, dim],
    ordered (row, column, map) - for MNIST 6 * 6 * 32 = 1152 capsules of 8 dimensions.
    """

    def __init__(self, maps: int, dim: int, kernel_size: int, strides: int, scale: float = 1.0,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.maps = maps
        self.dim = dim
        self.kernel_size = kernel_size
        self.strides = strides
        self.scale = float(scale)
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer
        # scale != 1: squash(scale * conv(x) + b), the bias after the scaling, as in the official
        # code (conv_slim_capsule routes with coupling 1/32, then adds its bias); scale 1 keeps one
        # Conv2D with its own bias, so checkpoints of the paper's model are unchanged.
        self.conv = keras.layers.Conv2D(
            maps * dim, kernel_size, strides=strides, padding="valid", use_bias=self.scale == 1.0,
            kernel_initializer=kernel_initializer, bias_initializer=bias_initializer, name="conv"
        )

    def get_config(self) -> dict:
        return {**super().get_config(), "maps": self.maps, "dim": self.dim, "kernel_size": self.kernel_size,
                "strides": self.strides, "scale": self.scale, "kernel_initializer": self.kernel_initializer,
                "bias_initializer": self.bias_initializer}

    def build(self, input_shape: tuple) -> None:
        self.conv.build(input_shape)
        if self.scale != 1.0:
            self.bias = self.add_weight(name="bias", shape=(self.maps * self.dim,),
                                        initializer=keras.initializers.get(self.bias_initializer))

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        features = self.conv(inputs)
        if self.scale != 1.0:
            features = features * tf.cast(self.scale, features.dtype) + tf.cast(self.bias, features.dtype)
        height, width = features.shape[1], features.shape[2]
        capsules = tf.reshape(features, [-1, height * width * self.maps, self.dim])
        return squash(tf.cast(capsules, tf.float32))


@keras.saving.register_keras_serializable(package="capsrun")
class DigitCaps(keras.layers.Layer):
    """Fully connected capsule layer; the votes are routed by `routing` (a name in
    capsrun.models.routing.ROUTINGS, default routing-by-agreement).

    Input: u float32 [B, I, D_in]. Weights W: [I, J, D_out, D_in] (for MNIST [1152, 10, 16, 8]),
    no bias, as in the paper (`routing_bias`: the official code's [J, D_out] bias, kept by dynamic
    routing, and `leaky`: its leaky routing; see capsrun.models.routing.dynamic), drawn by
    `kernel_initializer` (anything `keras.initializers.get` takes; None: normal with stddev W_STDDEV).
    Output: v float32 [B, J, D_out].
    The prediction vectors u_hat[b, i, j] = W[i, j] @ u[b, i] of all J digit capsules are one
    batched matmul over the I primary capsules ([I, B, D_in] x [I, D_in, J*D_out]), transposed
    once to the [B, J, I, D_out] layout of the routing interface, which needs no further transposes.
    """

    def __init__(self, num_capsules: int, dim: int, routing_iterations: int, routing: str = "dynamic",
                 routing_squash: str = "paper", kernel_initializer=None, routing_bias: bool = False,
                 leaky: bool = False, max_min_renormalize: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        self.kernel_initializer = kernel_initializer
        self.num_capsules = num_capsules
        self.dim = dim
        self.routing_iterations = routing_iterations
        self.routing = routing
        self.routing_squash = routing_squash
        self.routing_bias, self.leaky = bool(routing_bias), bool(leaky)
        self.max_min_renormalize = bool(max_min_renormalize)
        options = {} if routing_squash == "paper" else {"squash": routing_squash}  # routings with a squash option
        # the official code's options of dynamic routing (capsrun.models.routing.dynamic): given only
        # when set, so that the other routings (which have none) keep their arguments
        options.update({key: True for key, value in (("use_bias", self.routing_bias), ("leaky", self.leaky)) if value})
        if routing == "max_min":  # capsrun.models.routing.max_min
            options["renormalize"] = self.max_min_renormalize
        self.router = get_routing(routing)(iterations=routing_iterations, dtype="float32", name="routing", **options)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_capsules": self.num_capsules, "dim": self.dim,
                "routing_iterations": self.routing_iterations, "routing": self.routing,
                "routing_squash": self.routing_squash, "routing_bias": self.routing_bias, "leaky": self.leaky,
                "max_min_renormalize": self.max_min_renormalize,
                "kernel_initializer": None if self.kernel_initializer is None
                else keras.initializers.serialize(keras.initializers.get(self.kernel_initializer))}

    def build(self, input_shape: tuple) -> None:
        self.num_inputs, self.input_dim = int(input_shape[1]), int(input_shape[2])
        self.kernel = self.add_weight(
            name="W",
            shape=(self.num_inputs, self.num_capsules, self.dim, self.input_dim),
            # Made here, not in __init__: the default's seed is drawn when W is created, so a
            # CapsNet's initial weights under a given seed are those of earlier versions.
            initializer=(keras.initializers.RandomNormal(stddev=W_STDDEV) if self.kernel_initializer is None
                         else keras.initializers.get(self.kernel_initializer)),
            dtype="float32",
        )

    def votes(self, inputs: tf.Tensor) -> tf.Tensor:
        """u_hat float32 [B, J, I, D_out] (the routing layout) from inputs u float32 [B, I, D_in]."""
        weights = tf.transpose(
            tf.reshape(self.kernel, [self.num_inputs, self.num_capsules * self.dim, self.input_dim]),
            [0, 2, 1],
        )
        per_input = tf.reshape(
            tf.matmul(tf.transpose(inputs, [1, 0, 2]), weights), [self.num_inputs, -1, self.dim]
        )
        return tf.reshape(
            tf.transpose(per_input, [1, 0, 2]), [-1, self.num_capsules, self.num_inputs, self.dim]
        )

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        capsules, _ = self.router(self.votes(inputs))
        return capsules
