"""Compiled, distributed evaluation of a model over a data split: losses, accuracy, the confusion
matrix and (on request) every example's scores. The Trainer validates with it; `capsrun eval`
tests with it.

Every replica returns sums (never means), which are added across replicas and batches, so a
partial last batch or an empty replica counts exactly. Shapes: N examples, J classes, T objects.
"""
import logging
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from capsrun.data.pipeline import eval_dataset, unpack
from capsrun.data.splits import Split
from capsrun.models.base import SCORES
from capsrun.training.clock import timed_call
from capsrun.training.progress import ProgressLog
from capsrun.training.steps import batch_sums

log = logging.getLogger(__name__)


def _running(totals: Dict[str, tf.Tensor]) -> Dict[str, float]:
    """The mean loss and the accuracy of the batches summed so far (for a progress line)."""
    count = max(float(totals["count"]), 1.0)
    return {"loss": float(totals["loss"]) / count, "accuracy": float(totals["correct"]) / count}


class Evaluator:
    """Evaluates `model` on a split under `strategy` (the one whose scope created the model).

    run(split) returns a dict of Python numbers: loss, the model's loss terms (margin_loss,
    reconstruction_loss for a CapsNet), reconstruction_error (mean squared error per pixel, when
    the model reconstructs), accuracy, num_examples, and for one label per image
    confusion_matrix (int [J, J] numpy, rows = true class, columns = predicted class).
    run(split, keep_outputs=True) also returns, in the order of the split, `scores` (float32
    [N, J] numpy, the class scores of every example: capsule lengths for a CapsNet) and
    `predictions` (int32 [N] or [N, T] numpy); `capsrun eval` uses them for the misclassified
    digits and for ensembles.

    After each run, `seconds` holds its wall time and `compile_seconds` the part of it spent in
    batches during which a step function was traced (the first batch, and a partial last one),
    so that the training clock can leave tracing out (capsrun.training.clock).
    """

    def __init__(self, model: Any, strategy: tf.distribute.Strategy, batch_size: int, jit_compile: bool = False,
                 log_every_steps: int = 20):
        self.model = model
        self.log_every_steps = log_every_steps
        self.strategy = strategy
        self.batch_size = batch_size
        self.seconds = self.compile_seconds = 0.0
        replica_step = tf.function(self._replica_step, jit_compile=jit_compile, reduce_retracing=True)
        self._step = tf.function(
            lambda batch: self._sum(strategy.run(replica_step, args=(batch,))), reduce_retracing=True
        )
        replica_outputs = tf.function(self._replica_outputs, jit_compile=jit_compile, reduce_retracing=True)
        self._outputs_step = tf.function(
            lambda batch: self._sum_and_gather(strategy.run(replica_outputs, args=(batch,))), reduce_retracing=True
        )

    def _replica_step(self, batch: tuple) -> Dict[str, tf.Tensor]:
        return self._replica_outputs(batch)[0]

    def _replica_outputs(self, batch: tuple) -> Tuple[Dict[str, tf.Tensor], tf.Tensor]:
        """(sums over the replica's examples, class scores float32 [b, J] of its examples)."""
        images, labels, components = unpack(batch)
        outputs = self.model(images, training=False)
        sums = batch_sums(self.model, outputs, images, labels, components)
        if self.model.num_targets == 1:
            predicted = self.model.predict_labels(outputs[SCORES])
            sums["confusion_matrix"] = tf.math.confusion_matrix(
                labels, predicted, num_classes=self.model.num_classes, dtype=tf.float32)
        return sums, tf.cast(outputs[SCORES], tf.float32)

    def _sum(self, per_replica: Dict[str, Any]) -> Dict[str, tf.Tensor]:
        return {key: self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                for key, value in per_replica.items()}

    def _sum_and_gather(self, per_replica: tuple) -> Tuple[Dict[str, tf.Tensor], tf.Tensor]:
        """Sums as in `_sum`; the scores of all replicas concatenated in the batch's order
        (each replica holds a contiguous slice of the global batch)."""
        sums, scores = per_replica
        return self._sum(sums), self.strategy.gather(scores, axis=0)

    def run(self, split: Split, keep_outputs: bool = False, progress: Optional[str] = None) -> Dict[str, Any]:
        """The metrics of `split` (see the class docstring); `progress` names the loop in progress
        log lines (every log_every_steps batches or 30 s), None for none."""
        totals = None
        scores = []
        start, compile_seconds = time.perf_counter(), 0.0
        step = self._outputs_step if keep_outputs else self._step
        dataset = self.strategy.experimental_distribute_dataset(eval_dataset(split, self.batch_size))
        batches = -(-len(split) // self.batch_size)
        lines = ProgressLog(progress, batches, self.log_every_steps, logger=log) if progress else None
        for done, batch in enumerate(dataset, 1):
            result, seconds, traced = timed_call((step,), lambda batch=batch: step(batch))
            compile_seconds += seconds if traced else 0.0
            if keep_outputs:
                sums, batch_scores = result
                scores.append(batch_scores.numpy())
            else:
                sums = result
            totals = sums if totals is None else {key: totals[key] + sums[key] for key in totals}
            if lines:
                lines.update(done, min(done * self.batch_size, len(split)), lambda sums=totals: _running(sums))
        totals = {key: value.numpy() for key, value in totals.items()}
        self.seconds, self.compile_seconds = time.perf_counter() - start, compile_seconds
        count = int(round(float(totals.pop("count"))))
        metrics = {key: float(value) / count for key, value in totals.items() if key.endswith("loss")}
        metrics["accuracy"] = float(totals["correct"]) / count
        metrics["num_examples"] = count
        if "reconstruction_loss" in metrics:
            targets = split.images if split.components is None else split.components
            shape = targets.shape[1:]
            crop = split.preprocessing.crop_size if split.preprocessing is not None else None
            if crop:  # the decoder reconstructs the model's input, the crop (smallNORB)
                shape = (crop, crop, shape[-1])
            metrics["reconstruction_error"] = metrics["reconstruction_loss"] / int(np.prod(shape))
        if "confusion_matrix" in totals:
            metrics["confusion_matrix"] = np.rint(totals["confusion_matrix"]).astype(np.int64)
        if keep_outputs:
            metrics[SCORES] = np.concatenate(scores, axis=0).astype(np.float32)
            metrics["predictions"] = self.model.predict_labels(metrics[SCORES]).numpy()
        return metrics
