"""The plain EM CapsNet, written straight from Procedure 1 of Hinton, Sabour & Frosst (2018),
kept for tests and `capsrun bench` (as `capsrun.models.reference` is for dynamic routing).

Same layers, weights and loss as `capsrun.models.em_capsnet.EMCapsNet` (it subclasses it and
overrides only the capsule layers' forward pass), but:
  - votes window by window: a Python loop over the parent positions, each window's poses
    sliced from the grid and multiplied by W (no patch extraction);
  - the E-step in the paper's linear domain: p_ij the Gaussian density itself,
    R_ij = a_j p_ij / sum over the child's parents of a_j' p_ij'; the denominators summed child
    by child with a Python loop over the windows and kernel positions that cover it;
  - the M-step's variance as the paper writes it, sum R' (V - mu)^2 / sum R', no centring;
  - the initial R from counting, in the same loop, the windows that cover each child.
Shapes as in `capsrun.models.em_capsnet`: windows [B, P, N, ...] with slot n = k * I + i.
Linear-domain densities over- or underflow in float32 for well-separated votes (the product
of 16 Gaussian densities); the tests run it in float64 on small shapes, where it is exact.
"""
from typing import List, Tuple

import numpy as np
import tensorflow as tf

from capsrun.models.em_capsnet import POSE, EMCapsNet
from capsrun.models.routing.em import inverse_temperatures


def plain_em(votes: tf.Tensor, activations: tf.Tensor, beta_u: tf.Tensor, beta_a: tf.Tensor,
             windows: List[List[Tuple[int, int]]], iterations: int, final_lambda: float, lambda_decay: float,
             epsilon: float) -> Tuple[tf.Tensor, tf.Tensor]:
    """Procedure 1. votes [B, P, N, J, 16], activations [B, P, N]; windows[p][k] = the child grid
    cell (row, col) under kernel position k of window p (N = K * I, slot n = k * I + i).
    Returns poses [B, P, J, 16] and activations [B, P, J]."""
    dtype = votes.dtype
    slots, types = votes.shape[2], votes.shape[3]
    kernel_positions = len(windows[0])
    inputs = slots // kernel_positions
    beta_u, beta_a = tf.cast(beta_u, dtype), tf.cast(beta_a, dtype)
    cover = {}  # child cell -> number of windows covering it
    for window in windows:
        for cell in window:
            cover[cell] = cover.get(cell, 0) + 1
    initial = np.array([[1.0 / (types * cover[cell]) for cell in window for _ in range(inputs)] for window in windows])
    assignments = tf.constant(initial[None, :, :, None] * np.ones([1, 1, 1, types]), dtype)  # R [1, P, N, J]
    for r, lam in enumerate(inverse_temperatures(iterations, final_lambda, lambda_decay)):
        # M-step
        weighted = assignments * activations[..., None]  # R'_ij = R_ij a_i  [B, P, N, J]
        total = tf.reduce_sum(weighted, axis=2)  # [B, P, J]
        mean = tf.reduce_sum(weighted[..., None] * votes, axis=2) / (total[..., None] + epsilon)  # [B, P, J, 16]
        deviation = votes - mean[:, :, None]
        variance = tf.reduce_sum(weighted[..., None] * tf.square(deviation), axis=2) / (total[..., None] + epsilon)
        variance = variance + epsilon
        sigma = tf.sqrt(variance)
        cost = (beta_u[:, None] + tf.math.log(sigma)) * total[..., None]
        activation = tf.sigmoid(lam * (beta_a - tf.reduce_sum(cost, axis=-1)))  # a_j [B, P, J]
        if r == iterations - 1:
            return mean, activation
        # E-step
        density = tf.exp(-tf.reduce_sum(tf.square(deviation) / (2.0 * variance[:, :, None]), axis=-1)) / tf.sqrt(
            tf.reduce_prod(2.0 * np.pi * variance, axis=-1))[:, :, None]  # p_ij [B, P, N, J]
        numerator = activation[:, :, None] * density
        per_slot = tf.reduce_sum(numerator, axis=-1)  # [B, P, N]
        sums = {}
        for p, window in enumerate(windows):
            for k, cell in enumerate(window):
                part = per_slot[:, p, k * inputs:(k + 1) * inputs]  # [B, I]
                sums[cell] = part if cell not in sums else sums[cell] + part
        denominator = tf.stack([tf.concat([sums[cell] for cell in window], axis=-1) for window in windows], axis=1)
        assignments = numerator / denominator[..., None]
    raise ValueError("iterations must be >= 1")


def conv_windows(grid: Tuple[int, int], kernel: int, stride: int) -> List[List[Tuple[int, int]]]:
    """windows[p][k] of a 'valid' convolution on a grid (p = oy * OW + ox, k = dy * kernel + dx)."""
    rows, cols = (grid[0] - kernel) // stride + 1, (grid[1] - kernel) // stride + 1
    return [[(oy * stride + dy, ox * stride + dx) for dy in range(kernel) for dx in range(kernel)]
            for oy in range(rows) for ox in range(cols)]


def plain_conv_votes(layer, poses: tf.Tensor, activations: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, list]:
    """The votes of a `ConvMatrixCaps` window by window: poses [B, H, W, I, 16], activations
    [B, H, W, I] -> votes [B, P, N, J, 16], child activations [B, P, N] and the windows."""
    windows = conv_windows(layer.grid, layer.kernel, layer.stride)
    k, inputs = layer.kernel, layer.inputs
    weights = tf.cast(layer.kernel_weights, poses.dtype)  # [K * I, J, 4, 4]
    votes, child_activations = [], []
    for window in windows:
        row, col = window[0]
        patch = tf.reshape(poses[:, row:row + k, col:col + k], [-1, k * k * inputs, 4, 4])  # [B, N, 4, 4]
        votes.append(tf.reshape(tf.matmul(patch[:, :, None], weights[None]), [-1, k * k * inputs, layer.types, POSE]))
        child_activations.append(tf.reshape(activations[:, row:row + k, col:col + k], [-1, k * k * inputs]))
    return tf.stack(votes, 1), tf.stack(child_activations, 1), windows


def plain_conv_caps(layer, poses: tf.Tensor, activations: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """`ConvMatrixCaps` computed window by window: poses [B, H, W, I, 16], activations
    [B, H, W, I] -> poses [B, OH, OW, J, 16], activations [B, OH, OW, J]."""
    votes, child_activations, windows = plain_conv_votes(layer, poses, activations)
    out_poses, out_activations = plain_em(votes, child_activations, layer.beta_u, layer.beta_a, windows,
                                          layer.iterations, layer.final_lambda, layer.lambda_decay, layer.epsilon)
    rows, cols = layer.out_grid
    return (tf.reshape(out_poses, [-1, rows, cols, layer.types, POSE]),
            tf.reshape(out_activations, [-1, rows, cols, layer.types]))


def plain_class_votes(layer, poses: tf.Tensor, activations: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, list]:
    """The votes of a `ClassMatrixCaps` position by position, the scaled centre (row, column)
    of each position added to vote entries (0, 3) and (1, 3): poses [B, H, W, I, 16],
    activations [B, H, W, I] -> votes [B, 1, N, J, 16], activations [B, 1, N], the one window."""
    rows, cols = layer.grid
    weights = tf.cast(layer.kernel_weights, poses.dtype)  # [I, J, 4, 4]
    votes = []
    for row in range(rows):
        for col in range(cols):
            matrices = tf.reshape(poses[:, row, col], [-1, layer.inputs, 1, 4, 4])
            vote = tf.reshape(tf.matmul(matrices, weights[None]), [-1, layer.inputs, layer.classes, POSE])
            if layer.coordinate_addition:
                offset = np.zeros([POSE])
                offset[3], offset[7] = (row + 0.5) / rows, (col + 0.5) / cols
                vote = vote + tf.constant(offset, vote.dtype)
            votes.append(vote)
    windows = [[(row, col) for row in range(rows) for col in range(cols)]]
    return tf.concat(votes, 1)[:, None], tf.reshape(activations, [-1, 1, rows * cols * layer.inputs]), windows


def plain_class_caps(layer, poses: tf.Tensor, activations: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """`ClassMatrixCaps` computed position by position: -> poses [B, J, 16], activations [B, J]."""
    votes, child_activations, windows = plain_class_votes(layer, poses, activations)
    out_poses, out_activations = plain_em(votes, child_activations, layer.beta_u, layer.beta_a, windows,
                                          layer.iterations, layer.final_lambda, layer.lambda_decay, layer.epsilon)
    return out_poses[:, 0], out_activations[:, 0]


class PlainEMCapsNet(EMCapsNet):
    """`EMCapsNet` with the plain capsule layers of this module (same weights and loss)."""

    def capsule_layers(self, primary: Tuple[tf.Tensor, tf.Tensor]) -> Tuple[tf.Tensor, tf.Tensor]:
        return plain_class_caps(self.class_caps, *plain_conv_caps(
            self.conv_caps2, *plain_conv_caps(self.conv_caps1, *primary)))

    def build_for_inputs(self) -> None:
        """Builds the layers through the fast path once (the plain one reads their built shapes)."""
        EMCapsNet.capsule_layers(self, self.primary_capsules(tf.zeros([1, *self.image_shape])))
        super().build_for_inputs()

    def copy_weights(self, model: EMCapsNet) -> None:
        """Takes over every weight of a built EMCapsNet of the same sizes."""
        for mine, theirs in zip(self.weights, model.weights, strict=True):
            mine.assign(theirs)


def build_plain(model: EMCapsNet) -> PlainEMCapsNet:
    """A built PlainEMCapsNet with the settings, loss and weights of `model`."""
    config = model.get_config()
    plain = PlainEMCapsNet(**{key: config[key] for key in ("image_shape", "num_classes", "num_targets", "loss",
                                                           *model.settings)}, name="plain_em_capsnet")
    plain.build_for_inputs()
    plain.copy_weights(model)
    return plain
