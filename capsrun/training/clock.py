"""The training clock of a run, for time-to-accuracy (the DAWNBench / airbench convention): how
long training and validation took, with the one-off tracing and compilation apart, and when
validation accuracy first reached `trainer.target_val_accuracy`.

What the clock counts (`training_seconds`): the wall time of every call of the compiled training step
or loop, and of every validation pass. It leaves out the time between them (TensorBoard summaries,
checkpoint files, progress output) and every call during which TensorFlow traced (and, on a GPU
with XLA, compiled) a function: those go to `compile_seconds`. A traced call also computes its
batch, so a few steps' worth of compute lands in `compile_seconds` (one CapsNet step of batch 128
is ~1 s on the 2-core CPU against ~5 s for its first, traced call).

The counters are tf.Variables saved with every checkpoint (the `clock` child of the checkpoint),
so a resumed run keeps counting where its checkpoint left off; the time of the steps a killed run
did after its last checkpoint is not counted, as those steps are trained again.
"""
import time
from typing import Any, Callable, Sequence, Tuple

import tensorflow as tf


class TrainingClock(tf.Module):
    """`training_seconds` and `compile_seconds` (see the module docstring), saved with every
    checkpoint. When validation first reached an accuracy is read from the run's validations
    (metrics.json), so that any target can be asked of a finished run."""

    def __init__(self) -> None:
        super().__init__(name="clock")
        self.training_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="training_seconds")
        self.compile_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="compile_seconds")

    @property
    def seconds(self) -> float:
        return float(self.training_seconds.numpy())

    def add(self, seconds: float, traced: bool) -> None:
        """Counts `seconds` of one timed call, as compile time when it traced a function."""
        (self.compile_seconds if traced else self.training_seconds).assign_add(seconds)

    def timed(self, functions: Sequence[Any], call: Callable[[], Any]) -> Any:
        """Runs `call()` (which must wait for its results, e.g. by reading them on the host) and
        counts its wall time; `functions` are the tf.functions it may trace."""
        result, seconds, traced = timed_call(functions, call)
        self.add(seconds, traced)
        return result


def tracing_count(functions: Sequence[Any]) -> int:
    """How many times the tf.functions `functions` have been traced so far."""
    return sum(function.experimental_get_tracing_count() for function in functions)


def timed_call(functions: Sequence[Any], call: Callable[[], Any]) -> Tuple[Any, float, bool]:
    """(call()'s result, its wall time in seconds, whether one of `functions` was traced during it)."""
    before = tracing_count(functions)
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    return result, seconds, tracing_count(functions) > before
