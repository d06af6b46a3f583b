"""Training in-process: one device vs. MirroredStrategy on 2 logical CPUs, and learning on real digits."""
import keras
import numpy as np
import tensorflow as tf

from capsrun.data.pipeline import train_dataset
from capsrun.data.splits import load_splits
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
    mirrored = _trainer(cfg, tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), tmp_path / "two", splits)
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


def test_gradient_clipping_is_exact_under_mirrored_strategy(tmp_path):
    cfg = compose_config("data.train_size=64", "trainer.max_grad_norm=0.01")
    splits = load_splits(cfg.data, cfg.seed)
    single = _trainer(cfg, tf.distribute.OneDeviceStrategy("/cpu:0"), tmp_path / "one", splits)
    mirrored = _trainer(cfg, tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), tmp_path / "two", splits)
    _one_step(single, splits), _one_step(mirrored, splits)
    for after_a, after_b in zip(single.model.trainable_variables, mirrored.model.trainable_variables):
        np.testing.assert_allclose(after_a.numpy(), after_b.numpy(), rtol=1e-4, atol=1e-6)


def test_loss_falls_and_accuracy_rises_on_real_digits(tmp_path):
    cfg = compose_config("data.train_size=512", "data.val_size=256", "epochs=6", "trainer.progress_bar=false")
    splits = load_splits(cfg.data, cfg.seed)
    trainer = _trainer(cfg, tf.distribute.get_strategy(), tmp_path, splits)
    metrics = trainer.fit()
    history = metrics["history"]
    assert len(history) == 6 and metrics["status"] == "completed"
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert metrics["best_val_accuracy"] > 0.5
