"""convention=paper | official (conf/convention/): the official code's training conventions
(research/capsules in tensorflow/models) as typed keys. docs/reproduction.md has the table."""
import json

import numpy as np
import pytest
import tensorflow as tf

from capsrun.models.base import InputSpec
from capsrun.models.layers import PrimaryCaps
from capsrun.models.losses import CapsuleLoss
from capsrun.models.ops import squash
from capsrun.models.registry import build_model
from capsrun.training.schedules import learning_rate_schedule
from tests.conftest import compose_config, run_cli

MNIST = InputSpec((28, 28, 1), 10)


def test_convention_keys_of_both_presets():
    paper, official = compose_config("convention=paper", experiment=None), compose_config("convention=official",
                                                                                          experiment=None)
    assert compose_config(experiment=None) == paper  # the default
    assert (official.model.initializer, official.model.digit_bias, official.model.leaky_routing,
            official.model.primary_scale) == ("official", True, False, 1 / 32)
    assert (official.loss.margin_scale, official.loss.margin_reduction) == (0.5, "mean")
    assert (official.optimizer.decay_steps, official.optimizer.staircase, official.optimizer.min_lr,
            official.optimizer.epsilon) == (2000, False, 1e-6, 1e-8)
    mixed = compose_config("convention=official", "loss.margin_reduction=sum", experiment=None)
    assert mixed.loss.margin_reduction == "sum" and mixed.model.digit_bias  # keys mix on the command line
    table1 = compose_config("convention=official", experiment="table1")
    assert table1.model.digit_bias and table1.optimizer.decay_steps == 2000


@pytest.mark.parametrize("convention, expected", [("paper", 8_215_568), ("official", 8_215_728)])
def test_parameter_count_with_the_digit_capsule_bias(convention, expected):
    cfg = compose_config(f"convention={convention}", experiment=None)
    model = build_model(cfg.model, cfg.loss, MNIST)
    assert model.count_params() == expected  # + [10, 16] = 160 biases


def test_learning_rate_at_given_steps():
    # 55,000 training digits at batch 128: 429 steps per epoch
    paper = learning_rate_schedule(compose_config("convention=paper", experiment=None).optimizer, 429)
    official = learning_rate_schedule(compose_config("convention=official", experiment=None).optimizer, 429)
    lr = {name: lambda step, s=schedule: float(s(tf.constant(step))) for name, schedule in
          (("paper", paper), ("official", official))}
    assert lr["paper"](428) == pytest.approx(1e-3) and lr["paper"](429) == pytest.approx(0.96e-3)
    assert lr["paper"](50 * 429) == pytest.approx(1e-3 * 0.96 ** 50, rel=1e-5)  # 1.30e-4 after 50 epochs
    assert lr["official"](1000) == pytest.approx(1e-3 * 0.96 ** 0.5, rel=1e-6)  # continuous
    assert lr["official"](50 * 429) == pytest.approx(6.4538e-4, rel=1e-4)  # 0.96 ** (21450 / 2000)
    assert lr["official"](10_000_000) == pytest.approx(1e-6)  # the floor


def test_official_margin_loss_is_one_twentieth_of_the_papers():
    rng = np.random.default_rng(0)
    lengths = tf.constant(rng.uniform(0, 1, size=(6, 10)), tf.float32)
    labels = tf.constant([0, 3, 9, 1, 1, 5])
    images = tf.zeros((6, 4, 4, 1))
    paper = CapsuleLoss()(lengths, labels, images, images)["margin"]
    official = CapsuleLoss(margin_scale=0.5, margin_reduction="mean")(lengths, labels, images, images)["margin"]
    np.testing.assert_allclose(official.numpy(), paper.numpy() / 20, rtol=1e-6)
    assert float(tf.reduce_min(paper)) > 0.01


def test_primary_scale_divides_the_convolution_before_its_bias():
    images = tf.constant(np.random.default_rng(1).uniform(size=(2, 12, 12, 3)), tf.float32)
    layer = PrimaryCaps(maps=2, dim=4, kernel_size=5, strides=2, scale=1 / 32, bias_initializer="ones")
    capsules = layer(images)
    features = tf.nn.conv2d(images, layer.conv.kernel, strides=2, padding="VALID") / 32 + 1.0
    np.testing.assert_allclose(capsules.numpy(), squash(tf.reshape(features, [2, -1, 4])).numpy(), rtol=1e-5)
    assert layer.conv.bias is None and layer.bias.shape == (8,)
    assert PrimaryCaps(maps=2, dim=4, kernel_size=5, strides=2).get_config()["scale"] == 1.0


def test_official_initializers():
    cfg = compose_config("convention=official", experiment=None)
    model = build_model(cfg.model, cfg.loss, MNIST)
    weights = {w.path: w.numpy() for w in model.weights}
    for path, value in weights.items():
        if path.endswith("bias"):
            np.testing.assert_allclose(value, 0.1, rtol=1e-6, err_msg=path)
    conv1, digit_w = weights["capsnet/conv1/kernel"], weights["capsnet/digit_caps/W"]
    assert np.abs(conv1).max() <= 0.1 and conv1.std() == pytest.approx(0.05 * 0.88, rel=0.05)  # truncated at 2 sd
    assert np.abs(digit_w).max() <= 0.2 and digit_w.std() == pytest.approx(0.1 * 0.88, rel=0.02)
    paper = build_model(compose_config(experiment=None).model, cfg.loss, MNIST)
    assert np.abs(paper.get_layer("digit_caps").kernel.numpy()).max() > 0.2  # untruncated N(0, 0.1)


def test_official_convention_trains_evaluates_and_reloads_through_the_cli(tmp_path):
    run = tmp_path / "run"
    trained = run_cli("train", "experiment=smoke", "convention=official", "data.train_size=64", f"hydra.run.dir={run}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    smoke = build_model(compose_config().model, compose_config().loss, MNIST)
    assert metrics["parameters"] == smoke.count_params() + 160
    evaluated = run_cli("eval", f"run_dir={run}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert 0 <= json.loads((run / "eval.json").read_text())["test_accuracy"] <= 1
