"""Checkpoints of a run: `checkpoints/last` and `checkpoints/best` (layout in `run_folder`), the
progress counters saved with them, restoring and finding them."""
from pathlib import Path
from typing import Any, Optional

import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import trackable_object_graph_pb2

from capsrun.errors import CapsrunError
from capsrun.training.run_folder import CHECKPOINT_KINDS, CHECKPOINTS, PathLike


class TrainingProgress(tf.Module):
    """Counters saved with every checkpoint: epoch (completed epochs), step_in_epoch (steps of the
    current epoch already trained), best_val_accuracy."""

    def __init__(self) -> None:
        super().__init__(name="progress")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        self.best_val_accuracy = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_val_accuracy")


class RunCheckpoints:
    """`checkpoints/last` (keep the newest `keep`) and `checkpoints/best` (keep 1) of a run.

    TensorFlow writes a checkpoint's data files first and updates the `checkpoint` index file
    atomically afterwards, so a crash while saving leaves the previous checkpoint in use.
    """

    def __init__(self, run_dir: PathLike, model: Any, optimizer: Any, progress: TrainingProgress, keep: int = 3,
                 clock: Optional[tf.Module] = None):
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, progress=progress,
                                              **({} if clock is None else {"clock": clock}))
        self.without_clock = tf.train.Checkpoint(model=model, optimizer=optimizer, progress=progress)
        root = Path(run_dir) / CHECKPOINTS
        for kind in CHECKPOINT_KINDS:  # a damaged state file: one line naming it, not the manager's traceback
            latest_checkpoint(run_dir, kind)
        self.last = tf.train.CheckpointManager(self.checkpoint, str(root / "last"), max_to_keep=keep)
        self.best = tf.train.CheckpointManager(self.checkpoint, str(root / "best"), max_to_keep=1)

    def save_last(self, step: int) -> str:
        return self.last.save(checkpoint_number=step)

    def save_best(self, step: int) -> str:
        return self.best.save(checkpoint_number=step)

    def restore(self, path: str) -> None:
        """Restores model, optimizer and progress from `path` (a checkpoint prefix); a damaged
        checkpoint, or one of another model, is a CapsrunError saying so."""
        check_model_weights(path, self.checkpoint.model)
        # Runs trained before the training clock existed have no `clock`: their time restarts at 0.
        restore_checkpoint(self.checkpoint if has_child(path, "clock") else self.without_clock, path)


def restore_checkpoint(checkpoint: tf.train.Checkpoint, path: str, partial: bool = False) -> None:
    """Restores `checkpoint` from `path`; an incompatible or damaged file is a CapsrunError."""
    status = None
    try:
        status = checkpoint.restore(path)
        if partial:
            status.expect_partial()
        status.assert_existing_objects_matched()
    except (ValueError, AssertionError, IndexError, KeyError, tf.errors.OpError) as error:
        if status is not None:  # else TensorFlow lists the unrestored values on stderr at exit, after the error line
            status.expect_partial()
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise CapsrunError(
            f"checkpoint {path} cannot be restored into this model/config ({detail}); "
            "check that the model settings are unchanged, or delete the damaged checkpoint files"
        ) from None


def saved_variable_count(path: str, child: str = "model") -> int:
    """How many variables the checkpoint at `path` holds below its root's `child` object (e.g. the
    model's weights), read from the checkpoint's object graph (variable names show only one of
    the paths that reach a variable, so they cannot be counted by prefix). A checkpoint that
    cannot be read (truncated by a full disk or an interrupted copy) is a CapsrunError."""
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    try:
        graph.ParseFromString(tf.train.load_checkpoint(path).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    except (tf.errors.OpError, IndexError, ValueError, KeyError, DecodeError) as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise CapsrunError(f"checkpoint {path} is damaged ({detail}); delete its files and use another "
                           "checkpoint (checkpoint=last or best), or retrain") from None
    roots = [ref.node_id for ref in graph.nodes[0].children if ref.local_name == child]
    seen, stack = set(), list(roots)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(ref.node_id for ref in graph.nodes[node].children)
    return sum(1 for node in seen if any(attr.name == "VARIABLE_VALUE" for attr in graph.nodes[node].attributes))


def has_child(path: str, child: str) -> bool:
    """Whether the root of the checkpoint at `path` has a child object named `child`."""
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(tf.train.load_checkpoint(path).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    return any(ref.local_name == child for ref in graph.nodes[0].children)


def check_model_weights(path: str, model: Any) -> None:
    """The checkpoint at `path` holds as many model weights as `model` has (CapsrunError if not:
    it comes from another model; if it cannot be read: it is damaged)."""
    saved = saved_variable_count(path)
    if saved != len(model.weights):
        raise CapsrunError(f"checkpoint {path} holds {saved} model weights but this config builds "
                           f"{len(model.weights)}; it comes from a run with a different model")


def latest_checkpoint(run_dir: PathLike, kind: str = "last") -> Optional[str]:
    """The newest checkpoint prefix in `checkpoints/<kind>` of a run folder, or None; a damaged
    `checkpoint` index file there is a CapsrunError."""
    folder = Path(run_dir) / CHECKPOINTS / kind
    try:
        return tf.train.latest_checkpoint(str(folder))
    except (tf.errors.OpError, ValueError, UnicodeDecodeError) as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise CapsrunError(f"{folder / 'checkpoint'} is damaged ({detail}); delete that index file and "
                           "restore it from a copy, or retrain") from None


def find_checkpoint(run_dir: PathLike, which: str = "best") -> str:
    """The checkpoint prefix for `which` = last | best | an explicit checkpoint path."""
    if which in CHECKPOINT_KINDS:
        path = latest_checkpoint(run_dir, which)
        if path is None and which == "best":
            path = latest_checkpoint(run_dir, "last")
        if path is None:
            raise CapsrunError(f"run {run_dir} has no checkpoint yet; train it first (capsrun train)")
        return path
    if not tf.io.gfile.exists(f"{which}.index"):
        raise CapsrunError(f"checkpoint {which} does not exist (expected {which}.index); use checkpoint=last|best|PATH")
    return which
