"""What the train step and the evaluation step both compute from one replica's batch: the sums of
the model's loss terms, of the correct predictions and of the examples.

Every replica returns sums (never means), which are added across replicas and batches, so a
partial last batch or an empty replica counts exactly. Shapes: b the replica's examples, J classes,
T objects per image, H, W, C image.
"""
import time
from typing import Dict, Optional

import tensorflow as tf

from capsrun.data.pipeline import to_unit_range
from capsrun.models.base import SCORES, TOTAL, Model

NOT_LOSSES = ("correct", "count")
"""Sums of `batch_sums` that are not loss terms."""


def correct_predictions(predicted: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """float32 [b]: 1 where the prediction is right. For T objects per image (labels int [b, T])
    an image counts only when both sorted label sets agree (the T best scores are its objects)."""
    if labels.shape.rank == 2:
        same = tf.equal(tf.sort(predicted, axis=-1), tf.sort(labels, axis=-1))
        return tf.cast(tf.reduce_all(same, axis=-1), tf.float32)
    return tf.cast(tf.equal(predicted, labels), tf.float32)


def batch_sums(model: Model, outputs: Dict[str, tf.Tensor], images: tf.Tensor, labels: tf.Tensor,
               components: Optional[tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Sums over a replica's examples, float32 scalars: `loss` (the model's differentiable total),
    one `<term>_loss` per loss term of the model (margin/reconstruction for a CapsNet,
    cross_entropy for the baseline CNN), `correct` predictions and `count` of examples.

    images float32 [b, H, W, C] in [0, 1]; labels int32 [b] or [b, T]; components uint8
    [b, T, H, W, C] (each object alone: the reconstruction targets of multi-object images) or None.
    """
    targets = images if components is None else to_unit_range(components)
    losses = dict(model.compute_losses(outputs, labels, targets))
    sums = {"loss": tf.reduce_sum(losses.pop(TOTAL))}
    sums.update({f"{name}_loss": tf.reduce_sum(value) for name, value in losses.items()})
    sums["correct"] = tf.reduce_sum(correct_predictions(model.predict_labels(outputs[SCORES]), labels))
    sums["count"] = tf.cast(tf.shape(labels)[0], tf.float32)
    return sums


class SumMeter:
    """The host side of `batch_sums`: adds the sums of steps (Python floats) and the examples they
    covered, and turns them into means per example and a throughput."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: Dict[str, float] = {}
        self.examples = 0
        self.start = time.perf_counter()

    def add(self, sums: Dict[str, float], examples: int) -> None:
        for key, value in sums.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.examples += examples

    def means(self) -> Dict[str, float]:
        """The mean of every loss term (`loss`, `<term>_loss`) per example and the `accuracy`."""
        count = max(self.examples, 1)
        values = {key: value / count for key, value in self.sums.items() if key not in NOT_LOSSES}
        values["accuracy"] = self.sums.get("correct", 0.0) / count
        return values

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def images_per_second(self) -> float:
        return max(self.examples, 1) / self.seconds()
