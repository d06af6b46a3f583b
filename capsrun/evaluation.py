"""Compiled, distributed evaluation: losses, accuracy and the confusion matrix over a data split.

Every replica returns sums (never means), which are added across replicas and batches, so a
partial last batch or an empty replica counts exactly.
"""
import numpy as np
import tensorflow as tf

from capsrun.data import eval_dataset
from capsrun.losses import capsule_losses


def to_unit_range(images):
    """uint8 images -> float32 in [0, 1]."""
    return tf.cast(images, tf.float32) / 255.0


class Evaluator:
    """Evaluates `model` on a split under `strategy` (the one whose scope created the model).

    run(split) returns a dict of Python numbers: loss, margin_loss, reconstruction_loss,
    reconstruction_error (mean squared error per pixel), accuracy, num_examples, and
    confusion_matrix (int [J, J] numpy, rows = true class, columns = predicted class).
    run(split, keep_outputs=True) also returns, in the order of the split, `lengths` (float32
    [N, J] numpy, the capsule lengths of every example) and `predictions` (int32 [N] numpy);
    `capsrun eval` uses them for the misclassified digits and for ensembles.
    """

    def __init__(self, model, loss_cfg, strategy, batch_size, jit_compile=False):
        self.model = model
        self.loss_cfg = loss_cfg
        self.strategy = strategy
        self.batch_size = batch_size
        replica_step = tf.function(self._replica_step, jit_compile=jit_compile, reduce_retracing=True)
        self._step = tf.function(
            lambda images, labels: self._sum(strategy.run(replica_step, args=(images, labels))),
            reduce_retracing=True,
        )
        replica_outputs = tf.function(self._replica_outputs, jit_compile=jit_compile, reduce_retracing=True)
        self._outputs_step = tf.function(
            lambda images, labels: self._sum_and_gather(strategy.run(replica_outputs, args=(images, labels))),
            reduce_retracing=True,
        )

    def _replica_step(self, images, labels):
        return self._replica_outputs(images, labels)[0]

    def _replica_outputs(self, images, labels):
        """(sums over the replica's examples, capsule lengths float32 [b, J] of its examples)."""
        images = to_unit_range(images)
        outputs = self.model(images, training=False)
        losses = capsule_losses(
            self.loss_cfg, outputs["lengths"], labels, images, outputs["reconstructions"], self.model.num_classes
        )
        predicted = tf.argmax(outputs["lengths"], axis=-1, output_type=tf.int32)
        confusion = tf.math.confusion_matrix(labels, predicted, num_classes=self.model.num_classes, dtype=tf.float32)
        sums = {
            "loss": tf.reduce_sum(losses["total"]),
            "margin_loss": tf.reduce_sum(losses["margin"]),
            "reconstruction_loss": tf.reduce_sum(losses["reconstruction"]),
            "confusion_matrix": confusion,
        }
        return sums, tf.cast(outputs["lengths"], tf.float32)

    def _sum(self, per_replica):
        return {key: self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                for key, value in per_replica.items()}

    def _sum_and_gather(self, per_replica):
        """Sums as in `_sum`; the lengths of all replicas concatenated in the batch's order
        (each replica holds a contiguous slice of the global batch)."""
        sums, lengths = per_replica
        return self._sum(sums), self.strategy.gather(lengths, axis=0)

    def run(self, split, keep_outputs=False):
        totals = None
        lengths = []
        dataset = self.strategy.experimental_distribute_dataset(eval_dataset(split, self.batch_size))
        for images, labels in dataset:
            if keep_outputs:
                sums, batch_lengths = self._outputs_step(images, labels)
                lengths.append(batch_lengths.numpy())
            else:
                sums = self._step(images, labels)
            totals = sums if totals is None else {key: totals[key] + sums[key] for key in totals}
        totals = {key: value.numpy() for key, value in totals.items()}
        confusion = np.rint(totals.pop("confusion_matrix")).astype(np.int64)
        count = int(confusion.sum())
        pixels = int(np.prod(split.images.shape[1:]))
        metrics = {key: float(value) / count for key, value in totals.items()}
        metrics["reconstruction_error"] = metrics["reconstruction_loss"] / pixels
        metrics["accuracy"] = float(np.trace(confusion)) / count
        metrics["num_examples"] = count
        metrics["confusion_matrix"] = confusion
        if keep_outputs:
            metrics["lengths"] = np.concatenate(lengths, axis=0).astype(np.float32)
            metrics["predictions"] = np.argmax(metrics["lengths"], axis=-1).astype(np.int32)
        return metrics
