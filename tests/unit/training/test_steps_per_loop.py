"""trainer.steps_per_loop: N steps in one compiled loop train the same weights as N single steps, and
logging, checkpoints, SIGTERM, divergence and resume keep working at loop granularity."""
import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from capsrun.data.splits import load_splits
from capsrun.errors import TrainingDiverged, TrainingInterrupted
from capsrun.training.distribute import mirrored_strategy
from capsrun.training.trainer import Trainer, crossed
from tests.conftest import compose_config

# the smoke experiment: 256 training digits at batch 32 = 8 steps per epoch; loops of 3 run 3, 3, 2
SETTINGS = ["epochs=2", "trainer.log_every_steps=2", "trainer.checkpoint_every_steps=4",
            "trainer.keep_checkpoints=100", "trainer.progress_bar=false"]


def trainer_for(run_dir, steps_per_loop, *overrides, strategy=None):
    cfg = compose_config(*SETTINGS, f"trainer.steps_per_loop={steps_per_loop}", *overrides)
    keras.utils.set_random_seed(cfg.seed)
    return Trainer(cfg, run_dir, strategy or tf.distribute.get_strategy(), load_splits(cfg.data, cfg.seed))


def weights(trainer):
    return [variable.numpy() for variable in trainer.model.trainable_variables]


def logged_steps(folder, tag="loss"):
    return [event.step for event in EventAccumulator(str(folder), size_guidance={"tensors": 0}).Reload().Tensors(tag)]


def checkpoint_steps(run_dir):
    state = tf.train.get_checkpoint_state(str(run_dir / "checkpoints" / "last"))
    return [int(path.rsplit("-", 1)[1]) for path in state.all_model_checkpoint_paths]


def test_crossed_keeps_the_cadence_of_every_n_steps():
    assert [step for step in range(1, 9) if crossed(step, 1, 4)] == [4, 8]  # one step per loop: step % 4 == 0
    assert [step for step in (3, 6, 8, 11, 14, 16) if crossed(step, 3 if step % 8 else 2, 4)] == [6, 8, 14, 16]
    assert not crossed(8, 8, None) and not crossed(8, 8, 0)


@pytest.fixture(scope="module")
def single_steps(tmp_path_factory):
    trainer = trainer_for(tmp_path_factory.mktemp("single"), 1)
    metrics = trainer.fit()
    return trainer, metrics


def test_a_loop_of_three_trains_like_three_single_steps(single_steps, tmp_path):
    single, single_metrics = single_steps
    looped = trainer_for(tmp_path, 3)
    metrics = looped.fit()
    assert looped.global_step == single.global_step == 16
    for a, b in zip(weights(single), weights(looped), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for record_a, record_b in zip(single_metrics["history"], metrics["history"], strict=True):
        for key in ("train_loss", "train_accuracy", "val_accuracy", "val_loss"):
            assert record_b[key] == pytest.approx(record_a[key], rel=1e-5), key
    # the loop ends at global steps 3, 6, 8 | 11, 14, 16: logged where a multiple of 2 was passed
    assert logged_steps(tmp_path / "train") == [3, 6, 8, 11, 14, 16]
    assert logged_steps(single.run_dir / "train") == [2, 4, 6, 8, 10, 12, 14, 16]
    assert checkpoint_steps(tmp_path) == [6, 8, 14, 16]  # every 4 steps (6 passes 4, 14 passes 12) + epoch ends


def test_a_loop_on_two_replicas_trains_like_one_device(single_steps, tmp_path):
    single, _ = single_steps
    looped = trainer_for(tmp_path, 3, strategy=mirrored_strategy(["/cpu:0", "/cpu:1"]))
    looped.fit()
    for a, b in zip(weights(single), weights(looped), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_sigterm_stops_after_the_next_loop_and_the_resumed_run_ends_like_a_straight_one(single_steps, tmp_path,
                                                                                       monkeypatch):
    single, _ = single_steps
    interrupted = trainer_for(tmp_path, 3)
    run_steps = interrupted.train_steps

    def loop_then_signal(iterator, steps, stop):  # SIGTERM arrives during the first loop (steps 1-3)
        result = run_steps(iterator, steps, stop)
        if interrupted.global_step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(interrupted, "train_steps", loop_then_signal)
    with pytest.raises(TrainingInterrupted) as error:
        interrupted.fit()
    assert error.value.step == 6  # the flag rides on the next loop, which runs all its steps
    assert checkpoint_steps(tmp_path)[-1] == 6
    resumed = trainer_for(tmp_path, 3)
    assert resumed.restore_if_any(tmp_path) is not None and resumed.global_step == 6
    resumed.fit()
    assert resumed.global_step == 16
    for a, b in zip(weights(single), weights(resumed), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_non_finite_step_ends_the_loop_where_it_happened(tmp_path):
    trainer = trainer_for(tmp_path, 5, "loss.recon_weight=1e38")
    with pytest.raises(TrainingDiverged) as error:
        trainer.fit()
    assert error.value.step == 1 and trainer.global_step == 1  # steps 2-5 of the loop did not run
