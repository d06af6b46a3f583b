"""The files of a run folder: checkpoints, metrics.json, and the checks that a folder is a run.

Layout of a run folder (a Hydra output folder):
  .hydra/            config.yaml (resolved run config), overrides.yaml, hydra.yaml
  checkpoints/last/  model + optimizer + progress, every epoch (and every N steps if asked)
  checkpoints/best/  the checkpoint with the best validation accuracy so far
  tensorboard/       event files
  train.log          the log
  metrics.json       summary, rewritten atomically after every epoch
"""
from pathlib import Path

import tensorflow as tf
from omegaconf import OmegaConf

from capsrun.atomic import unwritable_reason
from capsrun.errors import CapsrunError

CHECKPOINT_KINDS = ("last", "best")


def check_writable(folder):
    """Fails early, before any training, when the run folder cannot be written."""
    reason = unwritable_reason(folder)
    if reason:
        raise CapsrunError(f"run folder {folder} is not writable ({reason}); choose another hydra.run.dir")


class TrainingProgress(tf.Module):
    """Counters saved with every checkpoint: epoch (completed epochs), step_in_epoch (steps of the
    current epoch already trained), best_val_accuracy."""

    def __init__(self):
        super().__init__(name="progress")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        self.best_val_accuracy = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_val_accuracy")


class RunCheckpoints:
    """`checkpoints/last` (keep the newest `keep`) and `checkpoints/best` (keep 1) of a run.

    TensorFlow writes a checkpoint's data files first and updates the `checkpoint` index file
    atomically afterwards, so a crash while saving leaves the previous checkpoint in use.
    """

    def __init__(self, run_dir, model, optimizer, progress, keep=3):
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, progress=progress)
        root = Path(run_dir) / "checkpoints"
        self.last = tf.train.CheckpointManager(self.checkpoint, str(root / "last"), max_to_keep=keep)
        self.best = tf.train.CheckpointManager(self.checkpoint, str(root / "best"), max_to_keep=1)

    def save_last(self, step):
        return self.last.save(checkpoint_number=step)

    def save_best(self, step):
        return self.best.save(checkpoint_number=step)

    def restore(self, path):
        """Restores model, optimizer and progress from `path` (a checkpoint prefix)."""
        restore_checkpoint(self.checkpoint, path)


def restore_checkpoint(checkpoint, path, partial=False):
    """Restores `checkpoint` from `path`; an incompatible or damaged file is a CapsrunError."""
    try:
        status = checkpoint.restore(path)
        if partial:
            status.expect_partial()
        status.assert_existing_objects_matched()
    except (ValueError, AssertionError, IndexError, KeyError, tf.errors.OpError) as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise CapsrunError(
            f"checkpoint {path} cannot be restored into this model/config ({detail}); "
            "check that the model settings are unchanged, or delete the damaged checkpoint files"
        ) from None


def saved_variable_count(path, child="model"):
    """How many variables the checkpoint at `path` holds below its root's `child` object (e.g. the
    model's weights), read from the checkpoint's object graph (variable names show only one of
    the paths that reach a variable, so they cannot be counted by prefix)."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(tf.train.load_checkpoint(path).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    roots = [ref.node_id for ref in graph.nodes[0].children if ref.local_name == child]
    seen, stack = set(), list(roots)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(ref.node_id for ref in graph.nodes[node].children)
    return sum(1 for node in seen if any(attr.name == "VARIABLE_VALUE" for attr in graph.nodes[node].attributes))


def find_checkpoint(run_dir, which="best"):
    """The checkpoint prefix for `which` = last | best | an explicit checkpoint path."""
    if which in CHECKPOINT_KINDS:
        folder = Path(run_dir) / "checkpoints" / which
        path = tf.train.latest_checkpoint(str(folder))
        if path is None and which == "best":
            path = tf.train.latest_checkpoint(str(Path(run_dir) / "checkpoints" / "last"))
        if path is None:
            raise CapsrunError(f"run {run_dir} has no checkpoint yet; train it first (capsrun train)")
        return path
    if not tf.io.gfile.exists(f"{which}.index"):
        raise CapsrunError(f"checkpoint {which} does not exist (expected {which}.index); use checkpoint=last|best|PATH")
    return which


def load_run_config(run_dir):
    """The resolved config a run was trained with (its `.hydra/config.yaml`)."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not Path(run_dir).is_dir():
        raise CapsrunError(f"run folder {run_dir} does not exist")
    if not path.is_file():
        raise CapsrunError(f"{run_dir} is not a capsrun run folder (no .hydra/config.yaml)")
    return OmegaConf.load(path)
