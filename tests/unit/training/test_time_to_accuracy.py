"""Time to accuracy: the training clock leaves tracing out, validation every N steps, the first
validation that reaches trainer.target_val_accuracy, trainer.stop_at_val_accuracy, and the clock
across checkpoints (also of runs trained before it existed)."""
import json
import time

import keras
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from capsrun.config.validation import validate
from capsrun.data.splits import load_splits
from capsrun.errors import CapsrunError
from capsrun.training.clock import TrainingClock, timed_call
from capsrun.training.history import first_reaching
from capsrun.training.trainer import Trainer
from tests.conftest import compose_config

# the smoke experiment: 256 training digits at batch 32 = 8 steps per epoch, 64 validation digits
SETTINGS = ["trainer.progress_bar=false", "trainer.val_every_steps=3"]


def trainer_for(run_dir, *overrides):
    cfg = compose_config(*SETTINGS, *overrides)
    keras.utils.set_random_seed(cfg.seed)
    return Trainer(cfg, run_dir, tf.distribute.get_strategy(), load_splits(cfg.data, cfg.seed))


def scalar_events(folder, tag):
    """{step: value} of a scalar tag in the event files of `folder`."""
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0}).Reload()
    if tag not in events.Tags()["tensors"]:
        return {}
    return {event.step: float(tf.make_ndarray(event.tensor_proto)) for event in events.Tensors(tag)}


def test_a_call_that_traces_counts_as_compile_time_and_later_calls_as_training_time():
    @tf.function
    def step(x):
        time.sleep(0.3)  # Python: runs only while tracing
        return x + 1.0

    clock = TrainingClock()
    clock.timed([step], lambda: step(tf.constant(1.0)).numpy())
    assert clock.compile_seconds.numpy() >= 0.3 and clock.seconds == 0.0
    result, seconds, traced = timed_call([step], lambda: step(tf.constant(2.0)).numpy())
    assert result == 3.0 and not traced and seconds < 0.3
    clock.add(seconds, traced)
    assert 0.0 < clock.seconds < 0.3
    _, _, traced = timed_call([step], lambda: step(tf.constant([1.0, 2.0])).numpy())  # a new shape retraces
    assert traced


def test_first_reaching_is_the_first_validation_at_or_above_the_target():
    validations = [{"step": 3, "accuracy": 0.5}, {"step": 6, "accuracy": 0.9}, {"step": 8, "accuracy": 0.95}]
    assert first_reaching(validations, 0.9)["step"] == 6
    assert first_reaching(validations, 0.5)["step"] == 3
    assert first_reaching(validations, 0.96) is None


@pytest.fixture(scope="module")
def timed_run(tmp_path_factory):
    """Two epochs with a validation every 3 steps; the target is the accuracy of the validation at
    step 6, so that the test knows where it is first reached whatever the numbers."""
    folder = tmp_path_factory.mktemp("probe")
    probe = trainer_for(folder, "epochs=2").fit()
    accuracies = {record["step"]: record["accuracy"] for record in probe["validations"]}
    target = accuracies[6]
    first = next(step for step, accuracy in accuracies.items() if accuracy >= target)
    run_dir = tmp_path_factory.mktemp("timed")
    trainer = trainer_for(run_dir, "epochs=2", f"trainer.target_val_accuracy={target}")
    start = time.perf_counter()
    metrics = trainer.fit()
    wall = time.perf_counter() - start
    return run_dir, metrics, wall, first, target


def test_validation_runs_every_n_steps_and_at_every_epoch_end(timed_run):
    run_dir, metrics, _, _, _ = timed_run
    assert [record["step"] for record in metrics["validations"]] == [3, 6, 8, 9, 12, 15, 16]
    assert [record["epoch"] for record in metrics["validations"]][:3] == [3 / 8, 6 / 8, 1.0]
    seconds = [record["seconds"] for record in metrics["validations"]]
    assert seconds == sorted(seconds) and seconds[-1] == metrics["training_seconds"]
    assert sorted(scalar_events(run_dir / "val", "accuracy")) == [3, 6, 8, 9, 12, 15, 16]
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["validations"] == metrics["validations"]


def test_time_to_target_is_the_clock_at_the_first_validation_that_reached_it(timed_run):
    run_dir, metrics, wall, first, target = timed_run
    reached = next(record for record in metrics["validations"] if record["step"] == first)
    assert metrics["target_val_accuracy"] == target
    assert metrics["steps_to_target"] == first and metrics["epochs_to_target"] == first / 8
    assert metrics["time_to_target_seconds"] == reached["seconds"] > 0
    # tracing is apart: the clock and the compile time together stay within the wall time
    assert metrics["training_seconds"] + metrics["compile_seconds"] < wall
    # the first validation follows 3 small steps and one traced one: the trace is not on the clock
    assert metrics["validations"][0]["seconds"] < 0.5 * metrics["compile_seconds"]
    events = scalar_events(run_dir, "result/time_to_target_seconds")
    assert list(events) == [first] and events[first] == pytest.approx(reached["seconds"])
    assert scalar_events(run_dir, "result/steps_to_target")[first] == first


def test_stop_at_val_accuracy_stops_at_that_validation_and_a_rerun_trains_no_further(timed_run, tmp_path):
    _, metrics, _, first, target = timed_run
    stop = [f"trainer.stop_at_val_accuracy={target}", "epochs=3"]
    trainer = trainer_for(tmp_path, *stop)
    stopped = trainer.fit()
    assert stopped["status"] == "completed" and stopped["stopped_at_step"] == first == trainer.global_step
    assert stopped["validations"][-1]["step"] == first
    assert trainer.checkpoints.last.latest_checkpoint.endswith(f"-{first}")
    again = trainer_for(tmp_path, *stop)
    again.restore_if_any(tmp_path)
    assert again.fit()["global_step"] == first and again.global_step == first
    # without the stop it trains on from the checkpoint, as the straight run did
    further = trainer_for(tmp_path, "epochs=2")
    further.restore_if_any(tmp_path)
    assert further.fit()["global_step"] == 16
    assert further.history.validations[:len(stopped["validations"])] == stopped["validations"]


def test_the_clock_is_saved_with_the_checkpoint_and_an_older_checkpoint_without_it_restores(tmp_path):
    trainer = trainer_for(tmp_path / "run", "epochs=1")
    trainer.fit()
    saved = trainer.clock.seconds
    resumed = trainer_for(tmp_path / "run", "epochs=2")
    resumed.restore_if_any(tmp_path / "run")
    assert resumed.clock.seconds == saved > 0
    # a checkpoint written before the clock existed: model, optimizer and progress only
    old = trainer_for(tmp_path / "old", "epochs=1")
    old.fit()
    legacy = tf.train.Checkpoint(model=old.model, optimizer=old.optimizer, progress=old.progress)
    tf.train.CheckpointManager(legacy, str(tmp_path / "old" / "checkpoints" / "last"), max_to_keep=5).save(99)
    restored = trainer_for(tmp_path / "old", "epochs=2")
    restored.restore_if_any(tmp_path / "old")
    assert restored.global_step == 8 and restored.clock.seconds == 0.0


@pytest.mark.parametrize("override, message", [
    ("trainer.target_val_accuracy=98.5", "a fraction in (0, 1], e.g. 0.985"),
    ("trainer.stop_at_val_accuracy=0", "a fraction in (0, 1]"),
    ("trainer.val_every_steps=0", "trainer.val_every_steps must be null or >= 1"),
])
def test_bad_time_to_accuracy_settings_are_one_line_errors(override, message):
    with pytest.raises(CapsrunError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        validate(compose_config(override))


def test_a_target_without_validation_data_is_an_error():
    with pytest.raises(CapsrunError, match="needs validation data"):
        validate(compose_config("trainer.target_val_accuracy=0.9", "data.val_size=0"))
