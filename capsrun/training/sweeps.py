"""Sweeps: the HParams columns of a sweep, and the clean-up between the jobs of one.

`HParamsSweepCallback` is a Hydra callback (registered under `hydra.callbacks` in
conf/config.yaml). At the start of a multirun it writes `<sweep dir>/swept_keys.yaml`: the keys
the sweep varies (from the command line's sweeps and `hydra.sweeper.params`, e.g. an Optuna
search space). Each job reads it back (`job_hparams`) and writes TensorBoard's HParams
*experiment config* (those keys first, then the main hyper-parameters, and the metric columns)
into its own run, next to its session record (see capsrun/training/summaries.py): the sweep
folder itself gets no event files, so it shows up as no (empty) run of its own. TensorBoard takes
the experiment config of whichever run it finds first; every job of a sweep writes the same one.
With `tensorboard --logdir <sweep dir>` the HParams dashboard then shows the sweep as one table,
one row per job.

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
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from capsrun.atomic import write_bytes_atomic
from capsrun.training.run_folder import SWEPT_KEYS

log = logging.getLogger(__name__)

HPARAMS_METRICS = (
    ("", "result/best_val_accuracy", "best val accuracy"),
    ("val", "accuracy", "val accuracy"),
    ("val", "loss", "val loss"),
    ("", "test/error_percent", "test error %"),
    ("", "test/accuracy", "test accuracy"),
    ("", "result/train_accuracy", "train accuracy"),
    ("", "result/images_per_second", "train images/s"),
    ("", "result/time_to_target_seconds", "time to target s"),
)
"""(group, tag, display name) of the metric columns of the HParams table, in order (TensorBoard
shows the first five by default). TensorBoard reads a column as the last value of `tag` in the
run `<job>/<group>`: the val columns follow the validation curves while a job trains (the last
epoch once it is done); result/* are written when training completes, test/* by `capsrun eval`
or `capsrun report`. Short display names keep the table narrow. The time-to-target column is
listed only for runs with a target (`hparams_metrics`)."""

TARGET_KEY = "trainer.target_val_accuracy"
TARGET_METRIC = "result/time_to_target_seconds"


def hparams_metrics(hparams: Mapping[str, Any]) -> Tuple[Tuple[str, str, str], ...]:
    """HPARAMS_METRICS for a run with these hyper-parameters: without the time to the target
    validation accuracy unless the run has one (`trainer.target_val_accuracy`), so that no run
    lists a column it can never fill."""
    target = hparams.get(TARGET_KEY)
    has_target = isinstance(target, (int, float)) and not isinstance(target, bool)
    return tuple(metric for metric in HPARAMS_METRICS if has_target or metric[1] != TARGET_METRIC)

MAIN_HPARAMS = ("epochs", "batch_size", "optimizer.lr", "model.name", "model.routing", "model.routing_iterations",
                "loss.recon_weight", "data.name", "seed")
"""The hyper-parameters listed after the swept keys in the HParams table (the other config keys
are in each run's `config` text summary and its .hydra/config.yaml)."""

HPARAMS_GROUPS = ("convention", "experiment", "hparams_search")
"""Config groups whose choice is recorded as a hyper-parameter (they are not keys of a job's config)."""

NOT_HPARAMS = ("hydra", "resume")


def swept_keys(task_overrides: Sequence[str], sweeper_params: Optional[Mapping[str, Any]]) -> list:
    """The config keys a sweep varies, in command-line order: keys of sweep overrides on the
    command line (`model.routing_iterations=1,2,3`, `lr=interval(...)`) and of the sweeper's
    `params` (set by an experiment or an hparams_search config). Config-group choices
    (`experiment=a,b`) are included: each job records its choice as a hyper-parameter."""
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


def hparams_columns(hparams: Mapping[str, Any], swept: Sequence[str] = ()) -> List[str]:
    """The order of the HParams table's hyper-parameter columns: the swept keys, then
    MAIN_HPARAMS; only keys the run recorded (`hparams`: {key: value})."""
    columns = []
    for key in [*swept, *MAIN_HPARAMS]:
        if key in hparams and key not in columns:
            columns.append(key)
    return columns


def experiment_config_pb(hparams: Mapping[str, Any], swept: Sequence[str] = (),
                         metrics: Optional[Sequence[Tuple[str, str, str]]] = None) -> Any:
    """TensorBoard's HParams experiment config (a Summary proto): `hparams_columns` as the
    hyper-parameters, `metrics` (group, tag, display name; default `hparams_metrics(hparams)`) as
    the metric columns.

    TensorBoard orders the columns by (not `differs`, name) and shows the first five, so the
    swept keys are marked `differs` (their values do differ between the jobs) and come first; the
    main hyper-parameters follow; the other keys are not listed, so that they do not push the
    main ones out of view in alphabetical order."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    metrics = hparams_metrics(hparams) if metrics is None else metrics
    experiment = api_pb2.Experiment(
        hparam_infos=[api_pb2.HParamInfo(name=name, type=_data_type(hparams[name]), differs=name in swept)
                      for name in hparams_columns(hparams, swept)],
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(group=group, tag=tag), display_name=name)
                      for group, tag, name in metrics],
    )
    content = plugin_data_pb2.HParamsPluginData(experiment=experiment, version=metadata.PLUGIN_DATA_VERSION)
    summary = summary_pb2.Summary()
    summary.value.add(tag=metadata.EXPERIMENT_TAG, metadata=metadata.create_summary_metadata(content),
                      tensor=metadata.NULL_TENSOR)
    return summary


def _data_type(value: Any) -> int:
    """The HParams data type of a recorded value (bool, number or string)."""
    from tensorboard.plugins.hparams import api_pb2

    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL
    return api_pb2.DATA_TYPE_FLOAT64 if isinstance(value, (int, float)) else api_pb2.DATA_TYPE_STRING


def job_hparams(hydra_cfg: DictConfig) -> Tuple[List[str], Dict[str, str]]:
    """(the keys the job's sweep varies, {config group: choice} of HPARAMS_GROUPS) for one Hydra
    job; no keys outside a multirun (or when the sweep folder has no swept_keys.yaml)."""
    choices = {group: str(hydra_cfg.runtime.choices[group]) for group in HPARAMS_GROUPS
               if OmegaConf.select(hydra_cfg, f"runtime.choices.{group}", default=None) is not None}
    swept: List[str] = []
    if str(OmegaConf.select(hydra_cfg, "mode", default="")).endswith("MULTIRUN"):
        path = Path(str(hydra_cfg.sweep.dir)) / SWEPT_KEYS
        try:
            swept = [str(key) for key in (yaml.safe_load(path.read_text()) or {}).get("swept_keys", [])]
        except (OSError, yaml.YAMLError, AttributeError) as error:
            log.warning("cannot read the swept keys of this sweep (%s); HParams lists the main hyper-parameters "
                        "only", error)
    return swept, choices


class HParamsSweepCallback(Callback):
    """Writes the keys a sweep varies to `<sweep dir>/swept_keys.yaml` when a multirun starts."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra_cfg = config.hydra
        params = OmegaConf.select(hydra_cfg, "sweeper.params", default=None)
        params = OmegaConf.to_container(params) if params is not None else {}
        keys = swept_keys(hydra_cfg.overrides.task, params)
        folder = Path(hydra_cfg.sweep.dir)
        folder.mkdir(parents=True, exist_ok=True)
        text = "# the keys this sweep varies: the first columns of TensorBoard's HParams table\n"
        write_bytes_atomic(folder / SWEPT_KEYS, (text + yaml.safe_dump({"swept_keys": keys})).encode())
        log.info("HParams columns of this sweep: %s, then the main hyper-parameters",
                 ", ".join(keys) or "no swept keys")


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
