"""Matrix capsules with EM routing (Hinton, Sabour & Frosst 2018, ICLR), the smallNORB network
of Figure 1 (`model=em_capsnet`):

    images [B, 32, 32, C]
    -> ReLU Conv1: 5x5, stride 2, A channels                       [B, 14, 14, A]
    -> PrimaryCaps: 1x1 convolutions, B types: 4x4 poses + logistic activations
                                          poses [B, 14, 14, B, 16], activations [B, 14, 14, B]
    -> ConvCaps1: 3x3 kernel, stride 2, C types, EM routing        [B, 6, 6, C, 16], [B, 6, 6, C]
    -> ConvCaps2: 3x3 kernel, stride 1, D types, EM routing        [B, 4, 4, D, 16], [B, 4, 4, D]
    -> Class capsules: one per class, transformation matrices shared over positions, coordinate
       addition, EM routing                                        poses [B, J, 16], activations [B, J]
    scores = activations [B, J]; loss: the spread loss (eq. 3) with an annealed margin.

Shapes: B batch (also the primary capsule types, as in the paper; context tells), J classes,
I / types child capsule types, 16 pose entries (4x4 row-major), K kernel positions,
P parent positions, N = K * I child slots per parent position (`capsrun.models.routing.em`).

Padding. Every convolution is 'valid', which gives Figure 1's 14x14, 6x6 and 4x4 grids on
32x32 crops (the paper's figure; also Zhang's github.com/www0wwwjs1/Matrix-Capsules-EM-
Tensorflow). Gritzman's reimplementation (github.com/IBM/matrix-capsules-with-em-routing,
models.py) pads Conv1 'SAME' (16, 7, 5); `model.em_conv1_padding=same` selects that.

Votes. A child capsule's pose M_i (4x4) votes V_ij = M_i W_ij for parent type j, with one
transformation matrix W_ij per kernel position, child type and parent type in ConvCaps (like a
convolution's kernel), and one per child type and class in the class layer (shared over the
positions: "we share the transformation matrices between different positions of the same
capsule type"). The windows are gathered by `tf.image.extract_patches` and the votes of all
positions and slots are one einsum (batched 4x4 matmuls); no loop over positions or kernels.

Coordinate addition (class layer, `model.em_coordinate_addition`): the paper adds "the scaled
coordinate (row, column) of the center of the receptive field of each capsule to the first two
elements of the right-hand column of its vote matrix": row (r + 0.5) / H_grid to vote entry
(0, 3) and column (c + 0.5) / W_grid to entry (1, 3), flattened indices 3 and 7 (r, c the
child's position on ConvCaps2's H_grid x W_grid grid; the scaling to [0, 1] by the grid is that
of both reimplementations). Zhang's code adds them to entries 0 and 1 (the first row) instead;
Gritzman's to 3 (column) and 7 (row). capsrun follows the paper's text.

Initialisation (the paper gives none): Conv1 and the primary convolutions Keras' defaults
(glorot uniform, zero biases); W truncated normal with stddev 0.5, so that an entry of
M_i W_ij (a sum of 4 products) has the variance of an entry of M_i; beta_u and beta_a zeros.

Training step counter: the margin of the spread loss grows with the training step. The model
owns it: `training_step`, a non-trainable int64 weight, incremented by every call with
training=True (one per training step; under tf.distribute aggregated ONLY_FIRST_REPLICA, so it
counts steps, not replicas) and read by `compute_losses` (the margin of the step just taken is
that of step `training_step - 1`, 0 for the first). Being a weight it is saved in checkpoints
and `.keras` files and restored with the model, so a resumed run continues the schedule.

Parameter count for smallNORB (32x32 crops, C image channels, J = 5 classes, A = B = C = D = 32):

    Conv1        5*5*C*32 + 32                    =     832  (C = 1)   1,632 (C = 2)
    PrimaryCaps  poses 32*(32*16) + 512 = 16,896; activations 32*32 + 32 = 1,056   17,952
    ConvCaps1    W 3*3*32 * 32 * 16 = 147,456; beta_u, beta_a 2*32 = 64          147,520
    ConvCaps2    W 3*3*32 * 32 * 16 = 147,456; beta_u, beta_a 2*32 = 64          147,520
    ClassCaps    W 32 * 5 * 16 = 2,560; beta_u, beta_a 2*5 = 10                    2,570
    ---------------------------------------------------------------------------------------
    trainable    316,394 (C = 1), 317,194 (C = 2); plus the step counter (1 number, not trainable)

The paper says "310K" for this network (Table 1, A = B = C = D = 32, with beta_u and beta_a
per parent type): 316K within its rounding of the count (which the paper does not derive);
the 294,912 transformation-matrix numbers of the two ConvCaps layers are 93% of it.
No decoder: `model.decoder_units` is ignored (the paper regularises with weight decay, not a
reconstruction; none is implemented here).
"""
from dataclasses import asdict
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from capsrun.errors import CapsrunError
from capsrun.models.base import ACTIVATIONS, CAPSULES, SCORES, InputSpec
from capsrun.models.losses import SpreadLoss
from capsrun.models.ops import top_labels
from capsrun.models.routing.em import em_routing, routed_in_chunks, window_children

POSE = 16
"""Entries of a 4x4 pose matrix."""

W_STDDEV = 0.5
"""Spread of the transformation matrices W (module docstring: keeps the variance of pose entries)."""


def _w_initializer() -> dict:
    return {"class_name": "TruncatedNormal", "config": {"mean": 0.0, "stddev": W_STDDEV}}


def conv_side(size: int, kernel: int, stride: int, padding: str = "valid") -> int:
    """Output side of a convolution: ceil(size / stride) for 'same', else floor((size - kernel) / stride) + 1."""
    if padding == "same":
        return -(-size // stride)
    return max((size - kernel) // stride + 1, 0)


def matrix_votes(poses: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """Votes V [B, P, J, 16, N] = M W for child poses M [B, P, N, 16] and transformation matrices
    W [N, J, 4, 4] (one per slot): V[b, p, j, 4x + z, n] = sum_y M[b, p, n, x, y] W[n, j, y, z].

    As one batched matmul over the slots n, [N, B*P*4, 4] x [N, 4, J*4] (row (b, p, x), column
    (j, z)), then one transpose to the routing's layout. Why: the same product written as
    tf.einsum("bpnxy,njyz->bpjxzn") ran 2.5x slower for ConvCaps1 at batch 4 (199 against 81 ms
    on the 2-core development machine while a training shared it, 2026-12-03)."""
    shape = tf.shape(poses)
    batch, positions, slots, types = shape[0], shape[1], weights.shape[0], weights.shape[1]
    rows = tf.reshape(tf.transpose(tf.reshape(poses, [batch, positions, slots, 4, 4]), [2, 0, 1, 3, 4]),
                      [slots, -1, 4])  # [N, (b, p, x), y]
    columns = tf.reshape(tf.transpose(weights, [0, 2, 1, 3]), [slots, 4, types * 4])  # [N, y, (j, z)]
    votes = tf.reshape(tf.matmul(rows, columns), [slots, batch, positions, 4, types, 4])  # [N, B, P, x, J, z]
    return tf.reshape(tf.transpose(votes, [1, 2, 4, 3, 5, 0]), [batch, positions, types, POSE, slots])


def coordinate_offsets(rows: int, cols: int, types: int) -> np.ndarray:
    """Coordinate addition [16, N] for a rows x cols child grid of `types` capsule types, slot
    n = (r * cols + c) * types + i: (r + 0.5) / rows at entry 3 (pose (0, 3)), (c + 0.5) / cols
    at entry 7 (pose (1, 3)), zeros elsewhere (module docstring)."""
    r, c, _ = np.meshgrid(np.arange(rows), np.arange(cols), np.arange(types), indexing="ij")
    offsets = np.zeros([POSE, rows * cols * types])
    offsets[3] = ((r + 0.5) / rows).ravel()
    offsets[7] = ((c + 0.5) / cols).ravel()
    return offsets


class _EMSettings:
    """The routing settings every EM capsule layer shares (stored in its config). `chunk`: the
    examples routed together (`routed_in_chunks`: the backward pass recomputes chunk by chunk);
    0 = the whole batch with plain autodiff through the iterations (the memory-hungry form,
    kept for tests and bench)."""

    def _em_init(self, iterations: int, final_lambda: float, lambda_decay: float, epsilon: float,
                 chunk: int) -> None:
        self.iterations, self.final_lambda = int(iterations), float(final_lambda)
        self.lambda_decay, self.epsilon, self.chunk = float(lambda_decay), float(epsilon), int(chunk)

    def _em_config(self) -> dict:
        return {"iterations": self.iterations, "final_lambda": self.final_lambda, "lambda_decay": self.lambda_decay,
                "epsilon": self.epsilon, "chunk": self.chunk}

    def _betas(self, types: int) -> None:
        self.beta_u = self.add_weight(name="beta_u", shape=(types,), initializer="zeros")
        self.beta_a = self.add_weight(name="beta_a", shape=(types,), initializer="zeros")

    def votes(self, poses: tf.Tensor, activations: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """Votes V [B, P, J, 16, N] of every window (`window_inputs`, then `window_votes` with this
        layer's W) and the child activations [B, P, N]."""
        window_poses, window_activations = self.window_inputs(poses, activations)
        return self.window_votes(window_poses, self.kernel_weights), window_activations

    def _votes_and_routing(self, poses: tf.Tensor, activations: tf.Tensor, weights: tf.Tensor, beta_u: tf.Tensor,
                           beta_a: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """Window poses [B, P, N, 16] and activations [B, P, N] -> parent poses [B, P, J, 16] and
        activations [B, P, J]: the layer's votes (`window_votes`), then EM routing."""
        return em_routing(self.window_votes(poses, weights), activations, beta_u, beta_a, self.child_index,
                          self.iterations, self.final_lambda, self.lambda_decay, self.epsilon)

    def _route_windows(self, poses: tf.Tensor, activations: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """`_votes_and_routing` with this layer's weights, in chunks of `chunk` examples (or not)."""
        parameters = (self.kernel_weights, self.beta_u, self.beta_a)
        if self.chunk <= 0:
            return self._votes_and_routing(poses, activations, *parameters)
        return routed_in_chunks(self._votes_and_routing, poses, activations, parameters, self.chunk)


@keras.saving.register_keras_serializable(package="capsrun")
class PrimaryMatrixCaps(keras.layers.Layer):
    """Primary capsules: a 1x1 convolution to the 16 pose entries of each of `types` capsule
    types (linear) and one to their activations (logistic).

    Input: features [B, H, W, A]. Output: float32 poses [B, H, W, types, 16] and activations
    [B, H, W, types]. Weights: pose kernel [1, 1, A, 16 types] + bias, activation kernel
    [1, 1, A, types] + bias."""

    def __init__(self, types: int, **kwargs):
        super().__init__(**kwargs)
        self.types = int(types)
        self.pose_conv = keras.layers.Conv2D(self.types * POSE, 1, name="pose")
        self.activation_conv = keras.layers.Conv2D(self.types, 1, activation="sigmoid", name="activation")

    def get_config(self) -> dict:
        return {**super().get_config(), "types": self.types}

    def call(self, features: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        poses = tf.cast(self.pose_conv(features), tf.float32)
        activations = tf.cast(self.activation_conv(features), tf.float32)
        height, width = poses.shape[1], poses.shape[2]
        return tf.reshape(poses, [-1, height, width, self.types, POSE]), activations


@keras.saving.register_keras_serializable(package="capsrun")
class ConvMatrixCaps(_EMSettings, keras.layers.Layer):
    """A convolutional capsule layer with EM routing ('valid' windows of kernel x kernel at
    `stride`).

    Input: poses [B, H, W, I, 16] and activations [B, H, W, I]. Output: poses
    [B, OH, OW, types, 16] and activations [B, OH, OW, types], OH = (H - kernel) // stride + 1.
    Weights: W [K * I, types, 4, 4] (one matrix per kernel position, child type and parent
    type), beta_u and beta_a [types]."""

    def __init__(self, types: int, kernel: int, stride: int, iterations: int = 3, final_lambda: float = 0.01,
                 lambda_decay: float = 0.95, epsilon: float = 1e-9, chunk: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.types, self.kernel, self.stride = int(types), int(kernel), int(stride)
        self._em_init(iterations, final_lambda, lambda_decay, epsilon, chunk)

    def get_config(self) -> dict:
        return {**super().get_config(), "types": self.types, "kernel": self.kernel, "stride": self.stride,
                **self._em_config()}

    def build(self, poses_shape: tuple, activations_shape: tuple = None) -> None:
        _, height, width, inputs, _ = poses_shape
        self.grid, self.inputs = (int(height), int(width)), int(inputs)
        self.child_index = window_children(self.grid, self.inputs, self.kernel, self.stride)  # [P, N]
        self.out_grid = (conv_side(self.grid[0], self.kernel, self.stride),
                         conv_side(self.grid[1], self.kernel, self.stride))
        self.kernel_weights = self.add_weight(name="w", shape=(self.kernel * self.kernel * self.inputs, self.types,
                                                               4, 4), initializer=_w_initializer())
        self._betas(self.types)

    def windows(self, tensor: tf.Tensor) -> tf.Tensor:
        """[B, H, W, F] -> [B, P, K * F], slot (dy * kernel + dx) * F + f (extract_patches' order)."""
        patches = tf.image.extract_patches(tensor, sizes=[1, self.kernel, self.kernel, 1],
                                           strides=[1, self.stride, self.stride, 1], rates=[1, 1, 1, 1],
                                           padding="VALID")
        return tf.reshape(patches, [tf.shape(tensor)[0], self.out_grid[0] * self.out_grid[1], -1])

    def window_inputs(self, poses: tf.Tensor, activations: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """The child poses [B, P, N, 16] and activations [B, P, N] of every window."""
        height, width = self.grid
        flat_poses = tf.reshape(poses, [-1, height, width, self.inputs * POSE])
        window_poses = tf.reshape(self.windows(flat_poses), [tf.shape(poses)[0], -1, self.child_index.shape[1], POSE])
        return window_poses, self.windows(activations)

    def window_votes(self, window_poses: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
        """Votes V [B, P, types, 16, N] of window poses [B, P, N, 16] through W [N, types, 4, 4]."""
        return matrix_votes(window_poses, weights)

    def call(self, poses: tf.Tensor, activations: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        out_poses, out_activations = self._route_windows(*self.window_inputs(poses, activations))
        rows, cols = self.out_grid
        return (tf.reshape(out_poses, [-1, rows, cols, self.types, POSE]),
                tf.reshape(out_activations, [-1, rows, cols, self.types]))


@keras.saving.register_keras_serializable(package="capsrun")
class ClassMatrixCaps(_EMSettings, keras.layers.Layer):
    """The class capsules: every child capsule votes for every class through a matrix shared
    over positions (one per child type and class), with coordinate addition, then EM routing.

    Input: poses [B, H, W, I, 16] and activations [B, H, W, I]. Output: poses [B, classes, 16]
    and activations [B, classes]. Weights: W [I, classes, 4, 4], beta_u and beta_a [classes]."""

    def __init__(self, classes: int, coordinate_addition: bool = True, iterations: int = 3,
                 final_lambda: float = 0.01, lambda_decay: float = 0.95, epsilon: float = 1e-9, chunk: int = 0,
                 **kwargs):
        super().__init__(**kwargs)
        self.classes, self.coordinate_addition = int(classes), bool(coordinate_addition)
        self._em_init(iterations, final_lambda, lambda_decay, epsilon, chunk)

    def get_config(self) -> dict:
        return {**super().get_config(), "classes": self.classes, "coordinate_addition": self.coordinate_addition,
                **self._em_config()}

    def build(self, poses_shape: tuple, activations_shape: tuple = None) -> None:
        _, height, width, inputs, _ = poses_shape
        self.grid, self.inputs = (int(height), int(width)), int(inputs)
        self.child_index = np.arange(height * width * inputs, dtype=np.int32)[None, :]  # [1, N]: one window, the grid
        self.offsets = coordinate_offsets(height, width, self.inputs)  # [16, N]
        self.kernel_weights = self.add_weight(name="w", shape=(self.inputs, self.classes, 4, 4),
                                              initializer=_w_initializer())
        self._betas(self.classes)

    def window_inputs(self, poses: tf.Tensor, activations: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """All child poses [B, 1, N, 16] and activations [B, 1, N] as one window."""
        count = self.child_index.shape[1]
        return tf.reshape(poses, [-1, 1, count, POSE]), tf.reshape(activations, [-1, 1, count])

    def window_votes(self, window_poses: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
        """Votes V [B, 1, classes, 16, N] (coordinates added) of poses [B, 1, N, 16] through the
        shared W [I, classes, 4, 4] (slot n has type n % I)."""
        count = self.child_index.shape[1]
        votes = matrix_votes(window_poses, tf.tile(weights, [count // self.inputs, 1, 1, 1]))
        if self.coordinate_addition:
            votes = votes + tf.constant(self.offsets, votes.dtype)
        return votes

    def call(self, poses: tf.Tensor, activations: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        out_poses, out_activations = self._route_windows(*self.window_inputs(poses, activations))
        return out_poses[:, 0], out_activations[:, 0]


@keras.saving.register_keras_serializable(package="capsrun")
class EMCapsNet(keras.Model):
    """The smallNORB network of matrix capsules with EM routing (module docstring); fulfils
    `capsrun.models.base.Model`:

        call(images, labels=None, training=False) -> {"scores": class activations [B, J],
            "activations": the same, "capsules": class poses [B, J, 16]}
        compute_losses(outputs, labels, targets) -> {"spread": [B], "total": [B]}

    images float [B, H, W, C] in [0, 1]; labels int [B]. No decoder."""

    def __init__(self, image_shape: Sequence[int] = (32, 32, 1), num_classes: int = 5, a: int = 32, b: int = 32,
                 c: int = 32, d: int = 32, iterations: int = 3, final_lambda: float = 0.01,
                 lambda_decay: float = 0.95, coordinate_addition: bool = True, epsilon: float = 1e-9,
                 conv1_padding: str = "valid", routing_chunk: int = 0, num_targets: int = 1,
                 loss: Optional[Union[SpreadLoss, dict]] = None, **kwargs):
        super().__init__(**kwargs)
        self.loss_fn = SpreadLoss(**loss) if isinstance(loss, dict) else (loss or SpreadLoss())
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes, self.num_targets = int(num_classes), int(num_targets)
        self.settings = {"a": int(a), "b": int(b), "c": int(c), "d": int(d), "iterations": int(iterations),
                         "final_lambda": float(final_lambda), "lambda_decay": float(lambda_decay),
                         "coordinate_addition": bool(coordinate_addition), "epsilon": float(epsilon),
                         "conv1_padding": str(conv1_padding), "routing_chunk": int(routing_chunk)}
        check_sizes(self.image_shape, conv1_padding, self.num_targets)
        routing = {"iterations": iterations, "final_lambda": final_lambda, "lambda_decay": lambda_decay,
                   "epsilon": epsilon, "chunk": routing_chunk}
        self.conv1 = keras.layers.Conv2D(a, 5, strides=2, padding=conv1_padding, activation="relu", name="conv1")
        self.primary_caps = PrimaryMatrixCaps(b, name="primary_caps")
        self.conv_caps1 = ConvMatrixCaps(c, 3, 2, **routing, dtype="float32", name="conv_caps1")
        self.conv_caps2 = ConvMatrixCaps(d, 3, 1, **routing, dtype="float32", name="conv_caps2")
        self.class_caps = ClassMatrixCaps(self.num_classes, coordinate_addition, **routing, dtype="float32",
                                          name="class_caps")
        self.training_step = self.add_weight(name="training_step", shape=(), dtype="int64", initializer="zeros",
                                             trainable=False, aggregation="only_first_replica")

    def get_config(self) -> dict:
        return {**super().get_config(), "image_shape": list(self.image_shape), "num_classes": self.num_classes,
                "num_targets": self.num_targets, **self.settings, "loss": asdict(self.loss_fn)}

    def get_build_config(self) -> dict:
        return {"input_shape": [None, *self.image_shape]}

    def build_from_config(self, config: dict) -> None:
        self.build_for_inputs()

    def build_for_inputs(self) -> None:
        """Creates all weights by running one zero image through the network."""
        self(tf.zeros([1, *self.image_shape]), training=False)

    def primary_capsules(self, images: tf.Tensor, training: bool = False) -> Tuple[tf.Tensor, tf.Tensor]:
        """Primary poses [B, 14, 14, B, 16] and activations [B, 14, 14, B] of images [B, H, W, C]."""
        return self.primary_caps(self.conv1(tf.cast(images, self.compute_dtype)))

    def capsule_layers(self, primary: Tuple[tf.Tensor, tf.Tensor]) -> Tuple[tf.Tensor, tf.Tensor]:
        """ConvCaps1, ConvCaps2 and the class capsules on primary (poses, activations):
        class poses [B, J, 16] and activations [B, J]."""
        return self.class_caps(*self.conv_caps2(*self.conv_caps1(*primary)))

    def predict_labels(self, scores: tf.Tensor) -> tf.Tensor:
        """The class with the largest activation, int32 [B]."""
        return top_labels(scores, self.num_targets)

    def compute_losses(self, outputs: Dict[str, tf.Tensor], labels: tf.Tensor,
                       targets: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Per-example float32 [B] `spread` and `total` at the margin of the step just taken
        (`training_step - 1`, at least 0; `targets` are not used: no reconstruction)."""
        step = tf.maximum(tf.convert_to_tensor(self.training_step) - 1, 0)
        return self.loss_fn(outputs[SCORES], labels, step)

    def call(self, images: tf.Tensor, labels: tf.Tensor = None, training: bool = False) -> Dict[str, tf.Tensor]:
        if training:
            self.training_step.assign_add(1)
        poses, activations = self.capsule_layers(self.primary_capsules(images, training=training))
        return {SCORES: activations, ACTIVATIONS: activations, CAPSULES: poses}


def check_sizes(image_shape: Sequence[int], padding: str, num_targets: int) -> None:
    """Raises CapsrunError (one line, with the fix) when the images are too small for the network
    (the class layer needs at least a 1x1 grid) or hold more than one object."""
    if num_targets != 1:
        raise CapsrunError("model=em_capsnet classifies one object per image (spread loss); use model=capsnet "
                           "for data=multimnist")
    sides = [conv_side(int(side), 5, 2, padding) for side in image_shape[:2]]
    for kernel, stride in ((3, 2), (3, 1)):
        sides = [conv_side(side, kernel, stride) for side in sides]
    if min(sides) < 1:
        raise CapsrunError(f"model=em_capsnet: images of {image_shape[0]}x{image_shape[1]} are too small for its "
                           "layers (5x5/2, 3x3/2, 3x3/1); "
                           "use larger images (at least 17x17 with valid padding; data.image_size)")


def build(model_cfg: Any, loss_cfg: Any, spec: InputSpec) -> EMCapsNet:
    """A built EM CapsNet for the `model` and `loss` config groups and the data's InputSpec."""
    model = EMCapsNet(
        image_shape=spec.image_shape, num_classes=spec.num_classes, a=model_cfg.em_a, b=model_cfg.em_b,
        c=model_cfg.em_c, d=model_cfg.em_d, iterations=model_cfg.routing_iterations,
        final_lambda=model_cfg.em_final_lambda, lambda_decay=model_cfg.em_lambda_decay,
        coordinate_addition=model_cfg.em_coordinate_addition, epsilon=model_cfg.em_epsilon,
        conv1_padding=model_cfg.em_conv1_padding, routing_chunk=model_cfg.em_routing_chunk,
        num_targets=spec.num_targets,
        loss=SpreadLoss.from_config(loss_cfg), name="em_capsnet")
    model.build_for_inputs()
    return model
