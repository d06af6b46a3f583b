"""A TensorFlow profiler trace of chosen training steps (`trainer.profile_steps`), for TensorBoard's
Profile tab (`pip install 'capsrun[profile]'`, i.e. tensorboard-plugin-profile).

`trainer.profile_steps` is null (no trace), `[first, last]` (global steps, counted from 1: the
trace starts just before step `first` and stops after step `last`), or a count N, which means
`[2, N + 1]`: the first step of a run traces and compiles the step function and takes many times
longer than the others, so a count leaves it out. The trace goes to
`<run folder>/plugins/profile/<timestamp>/<host>.xplane.pb` (beside the run's own event files;
of a run trained before the per-phase layout, under `tensorboard/`), where TensorBoard looks for
it (`tensorboard --logdir <run folder>`, or any folder above it, tab Profile). Each traced step is marked
as a step (`tf.profiler.experimental.Trace("train", step_num=...)`), so the overview page shows
the step times.
"""
from pathlib import Path
from typing import Any, Optional, Tuple

import tensorflow as tf
from omegaconf import OmegaConf

from capsrun.atomic import PathLike


def profile_range(setting: Any) -> Optional[Tuple[int, int]]:
    """(first, last) global steps of `trainer.profile_steps` (null, [first, last] or a count N ->
    (2, N + 1)); None when nothing is to be traced. The config check (`validate`) has made sure
    that the setting is one of these forms."""
    if setting is None:
        return None
    if OmegaConf.is_list(setting) or isinstance(setting, (list, tuple)):
        first, last = (int(value) for value in setting)
        return first, last
    return 2, int(setting) + 1


class StepProfiler:
    """Starts the profiler before step `first` and stops it after step `last` (see the module
    docstring); does nothing when `setting` is null. A context manager: leaving it stops a trace
    still running (training ended, was interrupted or diverged before step `last`), so that the
    trace is written and the next run of a sweep can start its own."""

    def __init__(self, setting: Any, logdir: PathLike):
        self.steps = profile_range(setting)
        self.logdir = Path(logdir)
        self.running = False
        self._step_trace = None

    def before(self, step: int) -> None:
        """Called before global step `step` (1 for the first step of a run) is trained."""
        if self.steps is None:
            return
        if step == self.steps[0] and not self.running:
            tf.profiler.experimental.start(str(self.logdir))
            self.running = True
        if self.running:
            self._step_trace = tf.profiler.experimental.Trace("train", step_num=step, _r=1)
            self._step_trace.__enter__()

    def after(self, step: int) -> None:
        """Called after global step `step` was trained (its results read back)."""
        if self._step_trace is not None:
            self._step_trace.__exit__(None, None, None)
            self._step_trace = None
        if self.running and step >= self.steps[1]:
            self.stop()

    def stop(self) -> None:
        if self._step_trace is not None:
            self._step_trace.__exit__(None, None, None)
            self._step_trace = None
        if self.running:
            self.running = False
            tf.profiler.experimental.stop()

    def __enter__(self) -> "StepProfiler":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
