"""TensorBoard output: scalar groups, image grids, the HParams record, and event clean-up on resume."""
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
from capsrun.training.run_folder import TENSORBOARD, PathLike


def image_grid(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Tiles rows of images into one image.

    rows: list of R arrays, each [N, H, W, C] with values in [0, 1].
    Returns float32 [1, R * H, N * W, C], ready for tf.summary.image.
    """
    strips = [np.concatenate(list(np.asarray(row, dtype=np.float32)), axis=1) for row in rows]
    return np.concatenate(strips, axis=0)[None]


def write_scalars(writer: tf.summary.SummaryWriter, prefix: str, values: Mapping[str, float], step: int) -> None:
    """Writes {name: number} as scalars `prefix/name` at `step`."""
    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.scalar(f"{prefix}/{name}", value)


def hparams_of(cfg: DictConfig) -> Dict[str, Any]:
    """The run's hyper-parameters as a flat {dotted key: bool|int|float|str} dict."""
    flat = flatten_dict(OmegaConf.to_container(cfg, resolve=True))
    return {key: value if isinstance(value, (bool, int, float, str)) else str(value) for key, value in flat.items()}


def write_hparams(writer: tf.summary.SummaryWriter, cfg: DictConfig, trial_id: str) -> None:
    """Records the hyper-parameters so that TensorBoard's HParams dashboard lists the run."""
    with writer.as_default(step=0):
        hparams_api.hparams(hparams_of(cfg), trial_id=trial_id)


FINAL_METRICS = ("best_val_accuracy", "val_accuracy", "train_accuracy", "images_per_second")


def write_final_metrics(writer: tf.summary.SummaryWriter, metrics: Mapping[str, Any]) -> None:
    """`final/<name>` scalars at the run's last step, the metric columns of the HParams table
    (capsrun/training/sweeps.py lists them in a sweep's experiment config)."""
    values = {name: metrics[name] for name in FINAL_METRICS if metrics.get(name) is not None}
    write_scalars(writer, "final", values, metrics["global_step"])


def truncate_events(folder: PathLike, last_step: int) -> None:
    """Drops events with step > `last_step` from the event files in `folder`.

    A run killed after its last checkpoint may have logged steps that the resumed run will log
    again; removing them keeps every TensorBoard step exactly once. A record cut short by the
    kill ends the file.
    """
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
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
    """Logs {tag: number} scalars and {tag: PNG bytes} images to `run_dir/tensorboard` at `step`,
    beside the run's training curves (what `capsrun eval` and `visualize` add to a run)."""
    writer = tf.summary.create_file_writer(str(Path(run_dir) / TENSORBOARD))
    with writer.as_default(step=step):
        for tag, value in (scalars or {}).items():
            tf.summary.scalar(tag, value)
        for tag, png in (pngs or {}).items():
            tf.summary.image(tag, tf.io.decode_png(png, channels=3)[None])
    writer.close()


def write_reconstructions(writer: tf.summary.SummaryWriter, model: Any, images: np.ndarray, step: int) -> None:
    """The image `val/reconstructions`: uint8 images [N, H, W, C] above the model's reconstructions
    from the predicted capsule(s), one row per reconstructed object; nothing for a model without
    a decoder."""
    inputs = tf.cast(images, tf.float32) / 255.0
    outputs = model(inputs, training=False)
    if RECONSTRUCTIONS not in outputs:
        return
    reconstructions = outputs[RECONSTRUCTIONS].numpy()
    rows = [reconstructions] if reconstructions.ndim == 4 else list(np.moveaxis(reconstructions, 1, 0))
    with writer.as_default(step=step):
        tf.summary.image("val/reconstructions", image_grid([inputs.numpy(), *rows]))
