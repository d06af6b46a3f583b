"""Capsule layers: squash, vector lengths, primary capsules and digit capsules with dynamic routing.

Shapes use B for the batch, I for the number of primary capsules (1152 for 28x28 MNIST),
J for the number of digit capsules (one per class), D_in/D_out for capsule dimensions.
All capsule arithmetic runs in float32, also under a mixed-precision policy.
"""
import keras
import tensorflow as tf

EPSILON = 1e-7
"""Added under square roots so that a zero vector has a finite length and finite gradients."""


def safe_norm(vectors, axis=-1, keepdims=False):
    """Euclidean length sqrt(sum(v^2) + EPSILON) along `axis`; finite gradient at zero."""
    return tf.sqrt(tf.reduce_sum(tf.square(vectors), axis=axis, keepdims=keepdims) + EPSILON)


def squash(vectors, axis=-1):
    """The paper's non-linearity v = |s|^2 / (1 + |s|^2) * s / |s| (eq. 1).

    Short vectors shrink to almost zero length, long ones to just below 1.
    `vectors`: any shape; squashing is along `axis`. Returns the same shape.
    """
    squared = tf.reduce_sum(tf.square(vectors), axis=axis, keepdims=True)
    scale = squared / (1.0 + squared) / tf.sqrt(squared + EPSILON)
    return vectors * scale


def dynamic_routing(predictions, iterations):
    """Routing-by-agreement (Procedure 1 of the paper).

    predictions: u_hat, float32 [B, I, J, D_out], the prediction of every primary capsule i
        for every digit capsule j.
    iterations: number of routing iterations r >= 1.
    Returns (v, c): v float32 [B, J, D_out], the squashed digit capsules; c float32 [B, I, J],
    the coupling coefficients of the last iteration (they sum to 1 over J).

    The logits b start at zero for each example; c = softmax(b) over the J digit capsules;
    s_j = sum_i c_ij u_hat_j|i; v_j = squash(s_j); b_ij += u_hat_j|i . v_j.
    Written as two batched contractions per iteration so that each maps to one matmul.
    """
    shape = tf.shape(predictions)
    logits = tf.zeros(shape[:3], dtype=predictions.dtype)
    for iteration in range(iterations):
        coupling = tf.nn.softmax(logits, axis=2)
        weighted = tf.einsum("bij,bijd->bjd", coupling, predictions)
        capsules = squash(weighted)
        if iteration < iterations - 1:
            logits = logits + tf.einsum("bijd,bjd->bij", predictions, capsules)
    return capsules, coupling


class PrimaryCaps(keras.layers.Layer):
    """A convolution whose output channels are grouped into capsules, then squashed.

    Input: feature maps [B, H, W, C]. Output: float32 capsules [B, H' * W' * maps, dim],
    ordered (row, column, map) - for MNIST 6 * 6 * 32 = 1152 capsules of 8 dimensions.
    """

    def __init__(self, maps, dim, kernel_size, strides, **kwargs):
        super().__init__(**kwargs)
        self.maps = maps
        self.dim = dim
        self.conv = keras.layers.Conv2D(
            maps * dim, kernel_size, strides=strides, padding="valid", name="conv"
        )

    def call(self, inputs):
        features = self.conv(inputs)
        height, width = features.shape[1], features.shape[2]
        capsules = tf.reshape(features, [-1, height * width * self.maps, self.dim])
        return squash(tf.cast(capsules, tf.float32))


class DigitCaps(keras.layers.Layer):
    """Fully connected capsule layer with routing-by-agreement.

    Input: u float32 [B, I, D_in]. Weights W: [I, J, D_out, D_in] (for MNIST [1152, 10, 16, 8]),
    no bias, as in the paper. Output: v float32 [B, J, D_out].
    Prediction vectors u_hat[b, i, j] = W[i, j] @ u[b, i] are computed for all J digit capsules
    at once as one batched matmul over the I primary capsules ([I, B, D_in] x [I, D_in, J*D_out]).
    """

    def __init__(self, num_capsules, dim, routing_iterations, **kwargs):
        super().__init__(**kwargs)
        self.num_capsules = num_capsules
        self.dim = dim
        self.routing_iterations = routing_iterations

    def build(self, input_shape):
        self.num_inputs, self.input_dim = int(input_shape[1]), int(input_shape[2])
        self.kernel = self.add_weight(
            name="W",
            shape=(self.num_inputs, self.num_capsules, self.dim, self.input_dim),
            initializer=keras.initializers.RandomNormal(stddev=0.01),
            dtype="float32",
        )

    def predictions(self, inputs):
        """u_hat float32 [B, I, J, D_out] from inputs u float32 [B, I, D_in]."""
        weights = tf.transpose(
            tf.reshape(self.kernel, [self.num_inputs, self.num_capsules * self.dim, self.input_dim]),
            [0, 2, 1],
        )
        per_input = tf.matmul(tf.transpose(inputs, [1, 0, 2]), weights)
        return tf.reshape(
            tf.transpose(per_input, [1, 0, 2]),
            [-1, self.num_inputs, self.num_capsules, self.dim],
        )

    def call(self, inputs):
        capsules, _ = dynamic_routing(self.predictions(inputs), self.routing_iterations)
        return capsules
