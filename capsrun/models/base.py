"""The model contract: what training, evaluation and the commands may rely on.

Every network capsrun trains (CapsNet, the baseline CNN, the plain reference CapsNet, and any
model added to `capsrun.models.registry`) is a `keras.Model` that fulfils `Model`:

    outputs = model(images, labels=None, training=False)

    images   float [B, H, W, C] in [0, 1]
    labels   int32 [B], or [B, T] for T objects per image (MultiMNIST: T = 2), or None. Models
             with a decoder reconstruct from the capsules of `labels` when given (training),
             else from those of `predict_labels(scores)` (evaluation).
    outputs  a dict (OUTPUT KEYS, documented here once):
      "scores"           float32 [B, J]  one score per class, higher = more likely present:
                                         capsule lengths, or class probabilities (softmax)
      "logits"           float32 [B, J]  optional: pre-softmax scores of a softmax classifier
      "capsules"         float32 [B, J, D] optional: the class capsules (pose vectors)
      "activations"      float32 [B, J]  optional: separate capsule activations (matrix
                                         capsules); `scores` then holds the same numbers
      "reconstructions"  float32 [B, H, W, C] optional, or [B, T, H, W, C]: images regenerated
                                         from the class capsules of the labels

    model.predict_labels(scores)   -> int32 [B] (the best class), or [B, T] (the T best, in
                                      increasing class order)
    model.compute_losses(outputs, labels, targets)
                                   -> {term: float32 [B]}: the loss terms the model defines,
                                      per example and unweighted, plus "total" (the weighted sum
                                      that is minimised). `targets` float32 [B, H, W, C] (or
                                      [B, T, H, W, C], each object alone) are the images the
                                      reconstructions are compared with.
    model.image_shape (H, W, C), model.num_classes J, model.num_targets T

Models are built by `registry.build_model(model_cfg, loss_cfg, spec)`; the loss settings are
given once, at construction. A model with capsules and a decoder (`CapsuleModel`) also offers
`capsules(images)` and `reconstruct(capsules, labels)`, which `capsrun visualize` uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Protocol, Tuple, runtime_checkable

if TYPE_CHECKING:  # the contract is imported by config checks, which must not load TensorFlow
    import tensorflow as tf

SCORES = "scores"
LOGITS = "logits"
CAPSULES = "capsules"
ACTIVATIONS = "activations"
RECONSTRUCTIONS = "reconstructions"
TOTAL = "total"
"""The output keys and the name of the minimised loss term (see the module docstring)."""


@dataclass(frozen=True)
class InputSpec:
    """What a model is built for: images [H, W, C], J classes, T objects per image."""

    image_shape: Tuple[int, int, int]
    num_classes: int
    num_targets: int = 1


@runtime_checkable
class Model(Protocol):
    """The contract of every capsrun model (see the module docstring)."""

    image_shape: Tuple[int, ...]
    num_classes: int
    num_targets: int

    def __call__(self, images: tf.Tensor, labels: tf.Tensor = None, training: bool = False) -> Dict[str, tf.Tensor]:
        ...

    def predict_labels(self, scores: tf.Tensor) -> tf.Tensor:
        ...

    def compute_losses(self, outputs: Dict[str, tf.Tensor], labels: tf.Tensor,
                       targets: tf.Tensor) -> Dict[str, tf.Tensor]:
        ...


@runtime_checkable
class CapsuleModel(Model, Protocol):
    """A model with class capsules and a decoder (CapsNet)."""

    def capsules(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Class capsules float32 [B, J, D] of images [B, H, W, C]."""
        ...

    def lengths(self, capsules: tf.Tensor) -> tf.Tensor:
        """Scores float32 [B, J] of capsules [B, J, D]."""
        ...

    def reconstruct(self, capsules: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        """Images [B, H, W, C] (labels [B]) or [B, T, H, W, C] (labels [B, T]) from the capsules
        of `labels` alone."""
        ...
