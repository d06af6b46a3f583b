"""Training in-process: one device vs. MirroredStrategy on 2 logical CPUs, learning on real digits, and the
Trainer raising (never printing or exiting) when a run diverges or is stopped."""
import json
import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from capsrun.data.pipeline import train_dataset, unpack
from capsrun.data.splits import load_splits
from capsrun.errors import TrainingDiverged, TrainingInterrupted
from capsrun.training.distribute import mirrored_strategy
from capsrun.training.steps import batch_sums
from capsrun.training.trainer import Trainer
from tests.conftest import compose_config


def _trainer(cfg, strategy, run_dir, splits):
    keras.utils.set_random_seed(cfg.seed)
    return Trainer(cfg, run_dir, strategy, splits)


def _one_step(trainer, splits):
    dataset = train_dataset(splits.train, trainer.batch_size, seed=0, epoch=0, shift_pixels=2)
    batch = next(iter(trainer.strategy.experimental_distribute_dataset(dataset)))
    return {key: float(value) for key, value in trainer.train_step(batch, tf.constant(0.0)).items()}


def test_mirrored_step_on_two_devices_equals_one_device(tmp_path):
    cfg = compose_config("data.train_size=64")
    splits = load_splits(cfg.data, cfg.seed)
    single = _trainer(cfg, tf.distribute.OneDeviceStrategy("/cpu:0"), tmp_path / "one", splits)
    mirrored = _trainer(cfg, mirrored_strategy(["/cpu:0", "/cpu:1"]), tmp_path / "two", splits)
    assert mirrored.strategy.num_replicas_in_sync == 2
    for before_a, before_b in zip(single.model.trainable_variables, mirrored.model.trainable_variables):
        np.testing.assert_array_equal(before_a.numpy(), before_b.numpy())
    result_single, result_mirrored = _one_step(single, splits), _one_step(mirrored, splits)
    for key in ("loss", "margin_loss", "reconstruction_loss", "correct"):
        np.testing.assert_allclose(result_single[key], result_mirrored[key], rtol=1e-5)
    initial = _trainer(cfg, tf.distribute.get_strategy(), tmp_path / "init", splits).model.trainable_variables
    changed = []
    for start, after_a, after_b in zip(initial, single.model.trainable_variables, mirrored.model.trainable_variables):
        np.testing.assert_allclose(after_a.numpy(), after_b.numpy(), rtol=1e-4, atol=1e-6)
        if not np.allclose(start.numpy(), after_a.numpy()):
            changed.append(start.path)
    assert {"capsnet/conv1/kernel", "capsnet/digit_caps/W", "capsnet/decoder/pixels/kernel"} <= set(changed)
    assert int(single.optimizer.iterations.numpy()) == int(mirrored.optimizer.iterations.numpy()) == 1


def test_mirrored_step_with_batch_norm_equals_one_device(tmp_path):
    """Efficient-CapsNet's batch norms see the GLOBAL batch under MirroredStrategy (synchronised
    statistics): the losses, the moving statistics and the step match one device.

    The step is compared per variable as the relative norm of the difference of the updates:
    float32 round-off in the two replicas' sums moves a few gradient elements near Adam's epsilon
    (measured: at most 2.2e-2 of an update's norm, bn1/beta; in float64 the two gradients agree to
    1e-14). Unsynchronised batch norm (each replica its own half batch) differs by 0.19-0.68 in the
    updates of every layer below the last batch norm and by 7e-5 in the loss."""
    cfg = compose_config("model=efficient_capsnet", "data.train_size=64")
    splits = load_splits(cfg.data, cfg.seed)
    single = _trainer(cfg, tf.distribute.OneDeviceStrategy("/cpu:0"), tmp_path / "one", splits)
    mirrored = _trainer(cfg, mirrored_strategy(["/cpu:0", "/cpu:1"]), tmp_path / "two", splits)
    before = [variable.numpy() for variable in single.model.weights]
    for start, other in zip(before, mirrored.model.weights):
        np.testing.assert_array_equal(start, other.numpy())
    result_single, result_mirrored = _one_step(single, splits), _one_step(mirrored, splits)
    for key in ("loss", "margin_loss", "reconstruction_loss", "correct"):
        np.testing.assert_allclose(result_single[key], result_mirrored[key], rtol=1e-5)
    changed = []
    for start, after_a, after_b in zip(before, single.model.weights, mirrored.model.weights):
        update_a, update_b = after_a.numpy() - start, after_b.numpy() - start
        if "moving_" in after_a.path:
            np.testing.assert_allclose(after_a.numpy(), after_b.numpy(), rtol=1e-4, atol=1e-6, err_msg=after_a.path)
        else:
            difference = np.linalg.norm(update_a - update_b)
            assert difference <= 0.05 * np.linalg.norm(update_a), (after_a.path, difference)
        if np.abs(update_a).max() > 0:
            changed.append(after_a.path)
    assert {"efficient_capsnet/features/bn1/gamma", "efficient_capsnet/features/bn4/moving_mean",
            "efficient_capsnet/features/bn4/moving_variance", "efficient_capsnet/digit_caps/routing/log_prior",
            "efficient_capsnet/primary_caps/depthwise/kernel"} <= set(changed)


def _updates(trainer, initial):
    """The change of every trainable variable since `initial`, flattened into one float64 vector."""
    return np.concatenate([(variable.numpy().astype(np.float64) - start).ravel()
                           for variable, start in zip(trainer.model.trainable_variables, initial)])


def test_gradient_clipping_is_exact_under_mirrored_strategy(tmp_path):
    cfg = compose_config("data.train_size=64", "trainer.max_grad_norm=0.01")
    splits = load_splits(cfg.data, cfg.seed)
    single = _trainer(cfg, tf.distribute.OneDeviceStrategy("/cpu:0"), tmp_path / "one", splits)
    mirrored = _trainer(cfg, mirrored_strategy(["/cpu:0", "/cpu:1"]), tmp_path / "two", splits)
    _one_step(single, splits), _one_step(mirrored, splits)
    for after_a, after_b in zip(single.model.trainable_variables, mirrored.model.trainable_variables):
        np.testing.assert_allclose(after_a.numpy(), after_b.numpy(), rtol=1e-4, atol=1e-6)
    # Both took the step that the WHOLE batch's gradient, clipped to global norm 0.01, gives: the
    # gradient computed here in one piece, scaled by 0.01 / its norm, applied by a fresh optimizer
    # of the same config to the same initial weights (Adam's first step is not scale-invariant with
    # its epsilon, so the clipped step differs from the unclipped one).
    expected = _trainer(cfg, tf.distribute.get_strategy(), tmp_path / "expected", splits)
    variables = expected.model.trainable_variables
    initial = [variable.numpy().astype(np.float64) for variable in variables]
    batch = next(iter(train_dataset(splits.train, cfg.batch_size, seed=0, epoch=0, shift_pixels=2)))
    images, labels, components = unpack(batch)
    with tf.GradientTape() as tape:
        outputs = expected.model(images, labels=labels, training=True)
        loss = batch_sums(expected.model, outputs, images, labels, components)["loss"] / cfg.batch_size
    gradients = tape.gradient(loss, variables)
    norm = float(tf.linalg.global_norm(gradients))
    assert norm > 2 * cfg.trainer.max_grad_norm, norm  # the clipping has something to do
    expected.optimizer.apply_gradients(zip([g * (cfg.trainer.max_grad_norm / norm) for g in gradients], variables))
    clipped_update = _updates(expected, initial)
    unclipped_cfg = compose_config("data.train_size=64")
    unclipped = _trainer(unclipped_cfg, tf.distribute.OneDeviceStrategy("/cpu:0"), tmp_path / "unclipped", splits)
    _one_step(unclipped, splits)
    unclipped_update = _updates(unclipped, initial)
    scale = np.abs(clipped_update).max()
    assert np.linalg.norm(unclipped_update - clipped_update) > 0.1 * np.linalg.norm(clipped_update)
    for trainer in (single, mirrored):
        np.testing.assert_allclose(_updates(trainer, initial), clipped_update, rtol=1e-3, atol=1e-3 * scale,
                                   err_msg=f"{trainer.strategy.num_replicas_in_sync} replica(s)")


def test_loss_falls_and_accuracy_rises_on_real_digits(tmp_path):
    cfg = compose_config("data.train_size=512", "data.val_size=256", "epochs=6", "trainer.progress_bar=false")
    splits = load_splits(cfg.data, cfg.seed)
    trainer = _trainer(cfg, tf.distribute.get_strategy(), tmp_path, splits)
    metrics = trainer.fit()
    history = metrics["history"]
    assert len(history) == 6 and metrics["status"] == "completed"
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert metrics["best_val_accuracy"] > 0.5


def test_a_non_finite_loss_raises_training_diverged(tmp_path, capsys):
    cfg = compose_config("loss.recon_weight=1e38", "trainer.progress_bar=false")
    trainer = Trainer(cfg, tmp_path, tf.distribute.get_strategy(), load_splits(cfg.data, cfg.seed))
    with pytest.raises(TrainingDiverged) as error:
        trainer.fit()
    assert error.value.step == 1 and "non-finite at step 1" in str(error.value)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["parameters"] == trainer.model.count_params()
    assert metrics["macs_per_image"] > 0 and metrics["routing"] == "dynamic"
    assert capsys.readouterr().err == ""


def test_a_stop_signal_raises_training_interrupted_after_a_checkpoint(tmp_path, monkeypatch):
    cfg = compose_config("trainer.progress_bar=false")
    trainer = Trainer(cfg, tmp_path, tf.distribute.get_strategy(), load_splits(cfg.data, cfg.seed))
    step = trainer.train_step

    def step_then_signal(batch, stop):  # SIGTERM arrives during the first step
        result = step(batch, stop)
        if trainer.global_step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(trainer, "train_step", step_then_signal)
    with pytest.raises(TrainingInterrupted) as error:
        trainer.fit()
    assert error.value.signal_name == "SIGTERM" and error.value.step == 2  # the flag rides on the next step
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints" / "last")).endswith("ckpt-2")
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "interrupted"


def test_the_steps_after_the_last_interval_are_logged_at_the_end_of_each_epoch(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = compose_config("epochs=2", "trainer.log_every_steps=5", "trainer.progress_bar=false")  # 8 steps/epoch
    trainer = Trainer(cfg, tmp_path, tf.distribute.get_strategy(), load_splits(cfg.data, cfg.seed))
    trainer.fit()
    events = EventAccumulator(str(tmp_path / "train"), size_guidance={"tensors": 0}).Reload()
    steps = [event.step for event in events.Tensors("loss")]
    assert steps == [5, 8, 10, 15, 16]  # every 5 steps, and the end of each epoch (8, 16)


def test_strategies_made_one_after_another_keep_their_collectives_apart(tmp_path):
    """Two jobs of a sweep over `model` with trainer.strategy=mirrored share a process: the second
    strategy's all-reduces must not collide with the first's (same group and instance keys with
    other shapes abort every collective of the process)."""
    from capsrun.training.distribute import make_strategy

    for index, model in enumerate(("capsnet", "efficient_capsnet", "capsnet")):
        cfg = compose_config(f"model={model}", "data.train_size=64", "trainer.strategy=mirrored",
                             "trainer.max_grad_norm=1.0")  # clipping all-reduces inside the replicas too
        splits = load_splits(cfg.data, cfg.seed)
        trainer = _trainer(cfg, make_strategy(cfg.trainer), tmp_path / str(index), splits)
        assert trainer.strategy.num_replicas_in_sync == 2
        assert np.isfinite(_one_step(trainer, splits)["loss"])
