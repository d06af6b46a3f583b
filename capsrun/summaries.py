"""TensorBoard output: scalar groups, image grids and the HParams record of a run."""
import numpy as np
import tensorflow as tf
from omegaconf import OmegaConf
from tensorboard.plugins.hparams import api as hparams_api


def image_grid(rows):
    """Tiles rows of images into one image.

    rows: list of R arrays, each [N, H, W, C] with values in [0, 1].
    Returns float32 [1, R * H, N * W, C], ready for tf.summary.image.
    """
    strips = [np.concatenate(list(np.asarray(row, dtype=np.float32)), axis=1) for row in rows]
    return np.concatenate(strips, axis=0)[None]


def write_scalars(writer, prefix, values, step):
    """Writes {name: number} as scalars `prefix/name` at `step`."""
    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.scalar(f"{prefix}/{name}", value)


def hparams_of(cfg):
    """The run's hyper-parameters as a flat {dotted key: bool|int|float|str} dict."""
    flat = {}

    def visit(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                visit(value, f"{prefix}{key}.")
            elif isinstance(value, (bool, int, float, str)):
                flat[f"{prefix}{key}"] = value
            else:
                flat[f"{prefix}{key}"] = str(value)

    visit(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def write_hparams(writer, cfg, trial_id):
    """Records the hyper-parameters so that TensorBoard's HParams dashboard lists the run."""
    with writer.as_default(step=0):
        hparams_api.hparams(hparams_of(cfg), trial_id=trial_id)
