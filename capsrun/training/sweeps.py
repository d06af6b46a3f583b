"""Sweeps: the HParams experiment config of a sweep, and the clean-up between the jobs of one.

`HParamsSweepCallback` is a Hydra callback (registered under `hydra.callbacks` in
conf/config.yaml). At the start of a multirun it writes `<sweep dir>/tensorboard/`, an event
file holding TensorBoard's HParams *experiment config*: the swept keys (from the command line's
sweeps and `hydra.sweeper.params`, e.g. an Optuna search space) and the metrics every job logs.
With `tensorboard --logdir <sweep dir>` the HParams dashboard then shows the sweep as one table,
one row per job (each job records its own hyper-parameters, see capsrun/summaries.py).

This module imports neither TensorFlow nor Keras at import time: Hydra instantiates the callback
in every process, the submitit launcher's parent process included.
"""
import ctypes
import ctypes.util
import gc
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from capsrun.training.run_folder import TENSORBOARD

log = logging.getLogger(__name__)

HPARAMS_METRICS = (
    ("final/best_val_accuracy", "best validation accuracy"),
    ("final/val_accuracy", "validation accuracy (last epoch)"),
    ("val/loss", "validation loss"),
    ("final/train_accuracy", "training accuracy (last epoch)"),
    ("final/images_per_second", "training images/s (last epoch)"),
    ("test/error_percent", "test error % (after capsrun eval or capsrun report)"),
    ("test/accuracy", "test accuracy (after capsrun eval or capsrun report)"),
)
"""(tag, display name) of the metrics in the sweep's HParams table; every tag is a scalar in a
job's own `tensorboard/` folder (final/* are written when training completes)."""

NOT_HPARAMS = ("hydra", "resume")


def swept_keys(task_overrides: Sequence[str], sweeper_params: Optional[Mapping[str, Any]]) -> list:
    """The config keys a sweep varies, in command-line order: keys of sweep overrides on the
    command line (`model.routing_iterations=1,2,3`, `lr=interval(...)`) and of the sweeper's
    `params` (set by an experiment or an hparams_search config). Config-group choices
    (`experiment=a,b`) are included as they are not hyper-parameter values of a job's config."""
    keys = []
    parser = OverridesParser.create()
    for override in parser.parse_overrides(list(task_overrides)):
        if override.is_sweep_override():
            keys.append(override.get_key_element())
    keys.extend(str(key) for key in (sweeper_params or {}))
    keys = [key.lstrip("+~") for key in keys]
    unique = []
    for key in keys:
        if key not in unique and not key.startswith(NOT_HPARAMS):
            unique.append(key)
    return unique


def write_hparams_experiment(folder: Any, hparam_names: Iterable[str],
                             metrics: Sequence[Tuple[str, str]] = HPARAMS_METRICS) -> str:
    """Writes the HParams experiment config (hyper-parameters `hparam_names`, `metrics` as
    (tag, display name)) into an event file in `folder`; returns the file's path."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.hparams import api as hparams_api
    from tensorboard.plugins.hparams import summary_v2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    summary = summary_v2.hparams_config_pb(
        hparams=[hparams_api.HParam(name) for name in hparam_names],
        metrics=[hparams_api.Metric(tag, display_name=name) for tag, name in metrics],
        time_created_secs=time.time(),
    )
    writer = EventFileWriter(str(folder), filename_suffix=".hparams")
    writer.add_event(event_pb2.Event(wall_time=time.time(), step=0, summary=summary))
    writer.close()
    return writer.get_logdir()


class HParamsSweepCallback(Callback):
    """Writes the sweep's HParams experiment config when a multirun starts."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra_cfg = config.hydra
        params = OmegaConf.select(hydra_cfg, "sweeper.params", default=None)
        params = OmegaConf.to_container(params) if params is not None else {}
        keys = swept_keys(hydra_cfg.overrides.task, params)
        folder = Path(hydra_cfg.sweep.dir) / TENSORBOARD
        write_hparams_experiment(folder, keys)
        log.info("HParams experiment config for %s written to %s", ", ".join(keys) or "no swept keys", folder)


def resident_memory_mib() -> float:
    """This process's resident memory in MiB (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as stream:
            pages = int(stream.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


_custom_gradients_at_start = set()


def _gradient_registry() -> Optional[dict]:
    """TensorFlow's global {op type: gradient function} registry (None if its layout changed)."""
    from tensorflow.python.framework import ops

    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    return registry if isinstance(registry, dict) else None


def start_job() -> None:
    """Notes the custom gradients registered before a job (see `end_job`)."""
    registry = _gradient_registry()
    _custom_gradients_at_start.clear()
    _custom_gradients_at_start.update(registry or ())


def _release_free_heap() -> None:
    """Hands the heap memory freed by the job back to the operating system (glibc keeps it in
    per-thread arenas otherwise, so the resident size would depend on which threads ran)."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


def end_job() -> float:
    """Releases what a job left behind so that the next job of a sweep run in the same process
    starts clean; logs the resident memory afterwards (flat over a sweep); returns it in MiB.

    - Every trace of a step that all-reduces gradients (Keras's optimizer under any tf.distribute
      strategy) registers a `CustomGradient-N` function in TensorFlow's global gradient registry,
      and that function holds the traced step's whole graph: about 9 MiB per job that nothing
      would ever free. The ones registered since `start_job` are dropped (their graphs belong to
      the finished job). Without this, test_memory_stays_flat_over_a_4_job_sweep (in
      tests/integration/test_sweeps_cli.py) sees 12, 24, 36, 48 TensorFlow graphs alive after the
      four jobs instead of none.
    - Keras's global state (layer-name counters, the default graph, TensorFlow's kernel cache)
      is cleared, the job's models, optimizers and compiled functions are garbage collected, and
      the freed heap is returned to the operating system.
    """
    import keras
    from tensorflow.python.framework import ops

    registry = _gradient_registry()
    if registry is not None:
        for name in [name for name in registry if name not in _custom_gradients_at_start]:
            if name.startswith("CustomGradient-"):
                del registry[name]
    _custom_gradients_at_start.clear()
    keras.backend.clear_session(free_memory=True)
    gc.collect()
    _release_free_heap()
    graphs = sum(isinstance(obj, ops.Graph) for obj in gc.get_objects())
    rss = resident_memory_mib()
    log.info("job finished: Keras session cleared, %d TensorFlow graphs alive, resident memory %.1f MiB",
             graphs, rss)
    return rss
