"""TensorBoard output read back from real event files: per-phase runs with shared tag names, the
run's own events in its folder (no tensorboard/ segment), old runs, and truncation on resume."""
import numpy as np
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from capsrun.training.summaries import RunWriters, truncate_events, write_scalars, write_to_run


def read(folder):
    """{tag: [(step, value)]} of the event files directly in `folder` (one TensorBoard run)."""
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    events.Reload()
    return {tag: [(event.step, float(np.ravel(tf.make_ndarray(event.tensor_proto))[0]))
                  for event in events.Tensors(tag)] for tag in events.Tags()["tensors"]}


def event_folders(run_dir):
    return {path.parent.relative_to(run_dir).as_posix() for path in run_dir.rglob("events.out.tfevents.*")}


def test_train_and_val_are_runs_with_the_same_tag_names(tmp_path):
    writers = RunWriters(tmp_path)
    for step in (2, 4):
        write_scalars(writers, "train", {"loss": 0.5, "accuracy": 0.25, "learning_rate": 1e-3,
                                         "images_per_second": 100.0}, step)
    write_scalars(writers, "val", {"loss": 0.75, "accuracy": 0.5}, 4)
    writers.close()
    assert event_folders(tmp_path) == {".", "train", "val"}
    train, val, run = read(tmp_path / "train"), read(tmp_path / "val"), read(tmp_path)
    assert train == {"loss": [(2, 0.5), (4, 0.5)], "accuracy": [(2, 0.25), (4, 0.25)]}
    assert val == {"loss": [(4, 0.75)], "accuracy": [(4, 0.5)]}
    # no validation counterpart: documented names train/<name>, in the run's own TensorBoard run
    assert set(run) == {"train/learning_rate", "train/images_per_second"}


def test_a_run_without_validation_has_no_val_run(tmp_path):
    writers = RunWriters(tmp_path)
    write_scalars(writers, "train", {"loss": 0.5}, 1)
    writers.flush()
    assert event_folders(tmp_path) == {"train"}


def test_eval_and_visualize_write_beside_the_curves_of_new_and_old_runs(tmp_path):
    new, old = tmp_path / "new", tmp_path / "old"
    (old / "tensorboard").mkdir(parents=True)
    for run in (new, old):
        write_to_run(run, 8, {"test/accuracy": 0.875})
    assert event_folders(new) == {"."} and read(new) == {"test/accuracy": [(8, 0.875)]}
    assert event_folders(old) == {"tensorboard"} and read(old / "tensorboard") == {"test/accuracy": [(8, 0.875)]}


def test_resume_truncation_covers_every_event_folder_of_new_and_old_runs(tmp_path):
    folders = [tmp_path, tmp_path / "train", tmp_path / "val", tmp_path / "tensorboard"]
    for folder in folders:
        writer = tf.summary.create_file_writer(str(folder))
        with writer.as_default():
            for step in range(1, 6):
                tf.summary.scalar("x", float(step), step=step)
        writer.close()
    truncate_events(tmp_path, 3)
    for folder in folders:
        assert read(folder) == {"x": [(1, 1.0), (2, 2.0), (3, 3.0)]}, folder
