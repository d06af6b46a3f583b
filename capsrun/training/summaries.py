"""TensorBoard output: one writer per phase, image grids, the HParams record, and event clean-up
on resume.

A run's events (the Keras convention: one writer per phase, the same tag names in both):
  <run>/train/   TensorBoard run `<run>/train`: loss, accuracy, margin_loss, reconstruction_loss
                 every trainer.log_every_steps
  <run>/val/     TensorBoard run `<run>/val`: the same tags every epoch, and the image reconstructions
  <run>/         TensorBoard run `<run>`: the HParams session and experiment config, the text
                 summaries `config` and `result`, the curves train/learning_rate and
                 train/images_per_second, result/* when training completes, test/* (capsrun eval)
                 and visualize/* (capsrun visualize)
So one chart per quantity overlays training and validation. TensorBoard's Time Series view groups
cards by the tag's first path segment, sorts the groups by name and opens only the first two:
`accuracy` and `loss`. The single-point result/* and test/* groups sort after them (and are
collapsed), as do train/* (the run-level curves); they are also columns of the HParams table.
Runs trained before this layout have everything in `<run>/tensorboard/` (`session_folder`).
"""
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.hparams import api as hparams_api

from capsrun.config.keys import flatten_dict
from capsrun.models.base import RECONSTRUCTIONS
from capsrun.training.run_folder import PHASES, PathLike, event_folders, session_folder
from capsrun.training.sweeps import experiment_config_pb

RUN_LEVEL = ("learning_rate", "images_per_second")
"""Training quantities with no validation counterpart: tags `train/<name>` in the run's own
TensorBoard run (the phase runs hold only what both phases have)."""


def image_grid(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Tiles rows of images into one image.

    rows: list of R arrays, each [N, H, W, C] with values in [0, 1].
    Returns float32 [1, R * H, N * W, C], ready for tf.summary.image.
    """
    strips = [np.concatenate(list(np.asarray(row, dtype=np.float32)), axis=1) for row in rows]
    return np.concatenate(strips, axis=0)[None]


class RunWriters:
    """The summary writers of a run: `session` (the run folder, or `tensorboard/` of an old run)
    and one per phase (`<run>/train`, `<run>/val`). Each is created at its first use, so that a
    run without validation data leaves no empty `val` run."""

    def __init__(self, run_dir: PathLike):
        self.run_dir = Path(run_dir)
        self._writers: Dict[str, tf.summary.SummaryWriter] = {}

    def _get(self, name: str, folder: Path) -> tf.summary.SummaryWriter:
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(str(folder))
        return self._writers[name]

    @property
    def session(self) -> tf.summary.SummaryWriter:
        return self._get("", session_folder(self.run_dir))

    def phase(self, phase: str) -> tf.summary.SummaryWriter:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; one of {PHASES}")
        return self._get(phase, self.run_dir / phase)

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def write_scalars(writers: RunWriters, phase: str, values: Mapping[str, float], step: int) -> None:
    """Writes {name: number} of `phase` ("train" or "val") at `step`: tag `name` in the phase's
    run, except RUN_LEVEL names, which become `phase/name` in the run's own TensorBoard run."""
    with writers.phase(phase).as_default(step=step):
        for name, value in values.items():
            if name not in RUN_LEVEL:
                tf.summary.scalar(name, value)
    run_level = {name: value for name, value in values.items() if name in RUN_LEVEL}
    if run_level:
        with writers.session.as_default(step=step):
            for name, value in run_level.items():
                tf.summary.scalar(f"{phase}/{name}", value)


def hparams_of(cfg: DictConfig) -> Dict[str, Any]:
    """The run's hyper-parameters as a flat {dotted key: bool|int|float|str} dict."""
    flat = flatten_dict(OmegaConf.to_container(cfg, resolve=True))
    return {key: value if isinstance(value, (bool, int, float, str)) else str(value) for key, value in flat.items()}


def write_hparams(writers: RunWriters, cfg: DictConfig, trial_id: str, swept: Sequence[str] = (),
                  choices: Optional[Mapping[str, str]] = None) -> None:
    """Records the run for TensorBoard's HParams dashboard, in the run's own TensorBoard run: the
    session (every config key, plus the config-group `choices` such as {"experiment": "smoke"}),
    the experiment config (columns: the `swept` keys, then the main hyper-parameters; see
    capsrun/training/sweeps.py) and the whole config as the text summary `config`."""
    hparams = {**hparams_of(cfg), **(choices or {})}
    with writers.session.as_default(step=0):
        hparams_api.hparams(hparams, trial_id=trial_id)
        tf.summary.experimental.write_raw_pb(experiment_config_pb(hparams, swept).SerializeToString(), step=0)
        config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        tf.summary.text("config", "    " + config_yaml.replace("\n", "\n    "))  # indented: Markdown code


FINAL_METRICS = ("best_val_accuracy", "val_accuracy", "train_accuracy", "images_per_second", "training_seconds",
                 "compile_seconds")
"""Written as result/<name> at the last step. result/time_to_target_seconds, steps_to_target and
epochs_to_target are written by the Trainer at the step where validation reached the target."""


def write_final_metrics(writers: RunWriters, metrics: Mapping[str, Any]) -> None:
    """`result/<name>` scalars at the run's last step (metric columns of the HParams table) and
    the same numbers as the text summary `result`, in the run's own TensorBoard run."""
    values = {name: metrics[name] for name in FINAL_METRICS if metrics.get(name) is not None}
    with writers.session.as_default(step=metrics["global_step"]):
        for name, value in values.items():
            tf.summary.scalar(f"result/{name}", value)
        rows = "".join(f"| {name} | {value:.6g} |\n" for name, value in values.items())
        tf.summary.text("result", f"| result | value |\n| --- | --- |\n{rows}")


def truncate_events(run_dir: PathLike, last_step: int) -> None:
    """Drops events with step > `last_step` from every event file of the run folder `run_dir`
    (the run's own, the phase folders, and `tensorboard/` of a run trained before them).

    A run killed after its last checkpoint may have logged steps that the resumed run will log
    again; removing them keeps every TensorBoard step exactly once. A record cut short by the
    kill ends the file.
    """
    paths = [path for folder in event_folders(run_dir) for path in sorted(folder.glob("events.out.tfevents.*"))]
    for path in paths:
        kept, dropped = [], 0
        try:
            for record in tf.data.TFRecordDataset(str(path)):
                event = event_pb2.Event.FromString(record.numpy())
                if event.step > last_step:
                    dropped += 1
                else:
                    kept.append(record.numpy())
        except tf.errors.DataLossError:
            dropped += 1
        if dropped:
            temporary = path.with_name(path.name + ".tmp")
            with tf.io.TFRecordWriter(str(temporary)) as writer:
                for record in kept:
                    writer.write(record)
            os.replace(temporary, path)


def write_to_run(run_dir: PathLike, step: int, scalars: Optional[Mapping[str, float]] = None,
                 pngs: Optional[Mapping[str, bytes]] = None) -> None:
    """Logs {tag: number} scalars and {tag: PNG bytes} images to the run's own TensorBoard run at
    `step` (what `capsrun eval` and `visualize` add to a run: test/*, visualize/*)."""
    writer = tf.summary.create_file_writer(str(session_folder(run_dir)))
    with writer.as_default(step=step):
        for tag, value in (scalars or {}).items():
            tf.summary.scalar(tag, value)
        for tag, png in (pngs or {}).items():
            tf.summary.image(tag, tf.io.decode_png(png, channels=3)[None])
    writer.close()


def displayable(images: np.ndarray) -> np.ndarray:
    """float [N, H, W, C] -> [N, H, W', C'] in [0, 1] for tf.summary.image: images with values
    outside [0, 1] (standardised smallNORB crops) stretched per image to [0, 1]; channels other
    than 1 or 3 (smallNORB stereo pairs) shown side by side as grey images [N, H, W * C, 1]."""
    images = np.asarray(images, np.float32)
    if images.size and (images.min() < 0 or images.max() > 1):
        low = images.min(axis=(1, 2, 3), keepdims=True)
        images = (images - low) / np.maximum(images.max(axis=(1, 2, 3), keepdims=True) - low, 1e-6)
    if images.shape[-1] not in (1, 3):
        count, height, width, channels = images.shape
        images = images.transpose(0, 1, 3, 2).reshape(count, height, channels * width, 1)
    return images


def write_reconstructions(writers: RunWriters, model: Any, inputs: Any, step: int) -> None:
    """The image `reconstructions` of the run `<run>/val`: the model inputs float32 [N, H, W, C]
    (capsrun.data.pipeline.model_inputs) above the model's reconstructions from the predicted
    capsule(s), one row per reconstructed object; nothing for a model without a decoder."""
    outputs = model(inputs, training=False)
    if RECONSTRUCTIONS not in outputs:
        return
    reconstructions = outputs[RECONSTRUCTIONS].numpy()
    rows = [reconstructions] if reconstructions.ndim == 4 else list(np.moveaxis(reconstructions, 1, 0))
    with writers.phase("val").as_default(step=step):
        tf.summary.image("reconstructions", image_grid([displayable(np.asarray(inputs)),
                                                        *map(displayable, rows)]))
