"""Compiled, distributed evaluation: losses, accuracy and the confusion matrix over a data split.

Every replica returns sums (never means), which are added across replicas and batches, so a
partial last batch or an empty replica counts exactly.
"""
import numpy as np
import tensorflow as tf

from capsrun.data import eval_dataset
from capsrun.losses import correct_predictions

NOT_LOSSES = ("correct", "count")


def to_unit_range(images):
    """uint8 images -> float32 in [0, 1]."""
    return tf.cast(images, tf.float32) / 255.0


def unpack(batch):
    """(images float32 [b, H, W, C] in [0, 1], labels int32 [b] or [b, K], components or None)
    from a pipeline batch (uint8 images, labels[, uint8 components [b, K, H, W, C]])."""
    return to_unit_range(batch[0]), batch[1], batch[2] if len(batch) > 2 else None


def batch_sums(model, loss_cfg, outputs, images, labels, components):
    """Sums over a replica's examples, float32 scalars: `loss` (differentiable), one
    `<name>_loss` per loss term of the model (margin/reconstruction for CapsNet, cross_entropy
    for the baseline CNN), `correct` predictions and `count` of examples."""
    losses = model.compute_losses(loss_cfg, outputs, labels, images, components)
    sums = {"loss": tf.reduce_sum(losses.pop("total"))}
    sums.update({f"{name}_loss": tf.reduce_sum(value) for name, value in losses.items()})
    sums["correct"] = tf.reduce_sum(correct_predictions(model.predict_labels(outputs["lengths"]), labels))
    sums["count"] = tf.cast(tf.shape(labels)[0], tf.float32)
    return sums


class Evaluator:
    """Evaluates `model` on a split under `strategy` (the one whose scope created the model).

    run(split) returns a dict of Python numbers: loss, the model's loss terms (margin_loss,
    reconstruction_loss for a CapsNet), reconstruction_error (mean squared error per pixel, when
    the model reconstructs), accuracy, num_examples, and for one label per image
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
            lambda batch: self._sum(strategy.run(replica_step, args=(batch,))), reduce_retracing=True
        )
        replica_outputs = tf.function(self._replica_outputs, jit_compile=jit_compile, reduce_retracing=True)
        self._outputs_step = tf.function(
            lambda batch: self._sum_and_gather(strategy.run(replica_outputs, args=(batch,))), reduce_retracing=True
        )

    def _replica_step(self, batch):
        return self._replica_outputs(batch)[0]

    def _replica_outputs(self, batch):
        """(sums over the replica's examples, class scores float32 [b, J] of its examples)."""
        images, labels, components = unpack(batch)
        outputs = self.model(images, training=False)
        sums = batch_sums(self.model, self.loss_cfg, outputs, images, labels, components)
        if self.model.num_targets == 1:
            predicted = self.model.predict_labels(outputs["lengths"])
            sums["confusion_matrix"] = tf.math.confusion_matrix(
                labels, predicted, num_classes=self.model.num_classes, dtype=tf.float32)
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
        for batch in dataset:
            if keep_outputs:
                sums, batch_lengths = self._outputs_step(batch)
                lengths.append(batch_lengths.numpy())
            else:
                sums = self._step(batch)
            totals = sums if totals is None else {key: totals[key] + sums[key] for key in totals}
        totals = {key: value.numpy() for key, value in totals.items()}
        count = int(round(float(totals.pop("count"))))
        metrics = {key: float(value) / count for key, value in totals.items() if key.endswith("loss")}
        metrics["accuracy"] = float(totals["correct"]) / count
        metrics["num_examples"] = count
        if "reconstruction_loss" in metrics:
            targets = split.images if split.components is None else split.components
            metrics["reconstruction_error"] = metrics["reconstruction_loss"] / int(np.prod(targets.shape[1:]))
        if "confusion_matrix" in totals:
            metrics["confusion_matrix"] = np.rint(totals["confusion_matrix"]).astype(np.int64)
        if keep_outputs:
            metrics["lengths"] = np.concatenate(lengths, axis=0).astype(np.float32)
            metrics["predictions"] = self.model.predict_labels(metrics["lengths"]).numpy()
        return metrics
