"""The fast path (capsrun's DigitCaps and `route` with its hand-written gradient) against the plain
reference CapsNet and plain autodiff: same outputs, losses and gradients on the same weights.
Also XLA and mixed precision on CPU, and `capsrun bench` end to end. Nothing here is timed."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from capsrun.models.base import InputSpec
from capsrun.models.capsnet import CapsNet
from capsrun.models.ops import squash
from capsrun.models.reference import ReferenceCapsNet, build_reference
from capsrun.models.routing.dynamic import route
from tests.conftest import compose_config, last_stderr_line, run_cli
from tests.helpers import build, dynamic_routing

SMALL = dict(conv1_filters=16, primary_maps=4, decoder_units=(32, 64))


def plain_routing(predictions, iterations):
    """Procedure 1 with plain TensorFlow ops and autodiff. predictions [B, I, J, D]."""
    logits = tf.zeros(tf.shape(predictions)[:3])
    for iteration in range(iterations):
        coupling = tf.nn.softmax(logits, axis=2)
        capsules = squash(tf.reduce_sum(coupling[..., None] * predictions, axis=1))
        if iteration < iterations - 1:
            logits = logits + tf.reduce_sum(predictions * capsules[:, None], axis=-1)
    return capsules, coupling


def gradients_of(model, images, labels, loss_cfg, jit_compile=False):
    """(outputs, per-example total loss, gradients of all trainable variables) of one batch."""

    def forward_backward(images, labels):
        with tf.GradientTape() as tape:
            outputs = model(images, labels=labels, training=True)
            total = model.compute_losses(outputs, labels, images)["total"]
            loss = tf.reduce_sum(total)
        return outputs, total, tape.gradient(loss, model.trainable_variables)

    if jit_compile:
        forward_backward = tf.function(forward_backward, jit_compile=True)
    return forward_backward(images, labels)


def twin_networks(scale_w=1.0, **sizes):
    """A capsrun CapsNet and a ReferenceCapsNet with the same weights (W scaled by `scale_w`
    so that the coupling coefficients move far from uniform)."""
    model = CapsNet(**sizes)
    model.build_for_inputs()
    model.digit_caps.kernel.assign(model.digit_caps.kernel * scale_w)
    reference = ReferenceCapsNet(**sizes)
    reference.build_for_inputs()
    reference.copy_weights(model)
    return model, reference


def assert_same(fast, plain, rtol, atol_fraction):
    """Equal up to float32 round-off: atol relative to the largest magnitude of `plain`."""
    fast, plain = np.asarray(fast), np.asarray(plain)
    np.testing.assert_allclose(fast, plain, rtol=rtol, atol=atol_fraction * (np.abs(plain).max() + 1e-30))


def images_and_labels(batch, seed=0):
    images = tf.random.stateless_uniform([batch, 28, 28, 1], seed=[seed, 1])
    return images, tf.constant(np.arange(batch) % 10, dtype=tf.int32)


@pytest.mark.parametrize("iterations", [1, 2, 3, 4])
def test_route_matches_plain_autodiff_in_values_and_gradients(iterations):
    rng = np.random.default_rng(iterations)
    predictions = tf.constant(rng.normal(size=(3, 40, 10, 16)).astype(np.float32) * 0.4)
    weights_v = tf.constant(rng.normal(size=(3, 10, 16)).astype(np.float32))
    weights_c = tf.constant(rng.normal(size=(3, 40, 10)).astype(np.float32))
    results = []
    for routing in (dynamic_routing, plain_routing):
        with tf.GradientTape() as tape:
            tape.watch(predictions)
            capsules, coupling = routing(predictions, iterations)
            loss = tf.reduce_sum(capsules * weights_v) + tf.reduce_sum(coupling * weights_c)
        results.append((capsules, coupling, tape.gradient(loss, predictions)))
    for fast, plain in zip(*results):
        assert_same(fast, plain, rtol=1e-4, atol_fraction=1e-5)
    assert np.abs(results[0][1].numpy() - 1 / 10).max() > 0.01 or iterations == 1  # routing did move


def test_route_has_finite_gradients_for_zero_predictions():
    predictions = tf.zeros([2, 10, 3, 4])
    with tf.GradientTape() as tape:
        tape.watch(predictions)
        capsules, _ = route(predictions, 3)
        loss = tf.reduce_sum(capsules)
    gradient = tape.gradient(loss, predictions)
    assert np.all(np.isfinite(gradient.numpy()))


@pytest.mark.parametrize("iterations", [1, 3])
def test_fast_capsnet_equals_reference_in_outputs_losses_and_gradients(iterations):
    model, reference = twin_networks(scale_w=30.0, routing_iterations=iterations, **SMALL)
    loss_cfg = compose_config().loss
    images, labels = images_and_labels(6)
    fast = gradients_of(model, images, labels, loss_cfg)
    plain = gradients_of(reference, images, labels, loss_cfg)
    for key in ("capsules", "scores", "reconstructions"):
        assert_same(fast[0][key], plain[0][key], rtol=1e-4, atol_fraction=1e-5)
    assert_same(fast[1], plain[1], rtol=1e-5, atol_fraction=1e-6)
    assert len(fast[2]) == len(plain[2]) == 11
    for fast_gradient, plain_gradient in zip(fast[2], plain[2]):
        assert_same(fast_gradient, plain_gradient, rtol=1e-3, atol_fraction=1e-4)
    predicted = {model.predict_labels(model(images)["scores"]).numpy().tobytes(),
                 reference.predict_labels(reference(images)["scores"]).numpy().tobytes()}
    assert len(predicted) == 1


def test_fast_capsnet_equals_reference_at_the_default_shapes():
    cfg = compose_config(experiment=None)
    model = build(cfg)
    reference = build_reference(cfg.model, cfg.loss, InputSpec((28, 28, 1), 10))
    reference.copy_weights(model)
    assert model.count_params() == reference.count_params() == 8_215_568
    assert reference.digit_caps.kernel.shape == (1152, 10, 16, 8)
    images, labels = images_and_labels(4, seed=3)
    fast = gradients_of(model, images, labels, cfg.loss)
    plain = gradients_of(reference, images, labels, cfg.loss)
    assert_same(fast[0]["capsules"], plain[0]["capsules"], rtol=1e-4, atol_fraction=1e-5)
    assert_same(fast[1], plain[1], rtol=1e-5, atol_fraction=1e-6)
    for fast_gradient, plain_gradient in zip(fast[2], plain[2]):
        assert_same(fast_gradient, plain_gradient, rtol=1e-3, atol_fraction=1e-4)


def test_xla_compiled_fast_path_gives_the_same_outputs_and_gradients():
    model, _ = twin_networks(scale_w=30.0, **SMALL)
    loss_cfg = compose_config().loss
    images, labels = images_and_labels(4, seed=5)
    compiled = gradients_of(model, images, labels, loss_cfg, jit_compile=True)
    eager = gradients_of(model, images, labels, loss_cfg)
    assert_same(compiled[0]["capsules"], eager[0]["capsules"], rtol=1e-4, atol_fraction=1e-5)
    assert_same(compiled[1], eager[1], rtol=1e-4, atol_fraction=1e-5)
    for compiled_gradient, eager_gradient in zip(compiled[2], eager[2]):
        assert_same(compiled_gradient, eager_gradient, rtol=1e-3, atol_fraction=1e-4)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_capsule_math_in_float32_with_finite_gradients(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = CapsNet(**SMALL)
        model.build_for_inputs()
        images, labels = images_and_labels(4, seed=7)
        outputs, total, gradients = gradients_of(model, images, labels, compose_config().loss)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.conv1.compute_dtype == policy.split("_")[1]
    assert model.digit_caps.kernel.dtype == "float32" and model.digit_caps.compute_dtype == "float32"
    for key in ("capsules", "scores", "reconstructions"):
        assert outputs[key].dtype == tf.float32, key
    assert np.all(np.isfinite(total.numpy()))
    assert all(np.all(np.isfinite(g.numpy())) for g in gradients)


BENCH_KEYS = {"capsrun_train", "capsrun_eval", "reference_train", "reference_eval", "conv_only",
              "digit_caps_capsrun", "digit_caps_reference"}
TINY_BENCH = ["model.conv1_filters=8", "model.primary_maps=2", "model.decoder_units=[16]",
              "batch_sizes=[4,8]", "warmup_steps=1", "timed_steps=2", "pipeline_batches=3"]


def test_bench_command_prints_the_table_and_writes_bench_json(tmp_path):
    result = run_cli("bench", *TINY_BENCH, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for label in ("capsrun train", "reference train", "conv-only bound", "input pipeline",
                  "capsrun train vs reference", "capsrun train / conv-only bound"):
        assert label in result.stdout, label
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["command"].startswith("capsrun bench")
    assert report["machine"]["cpu_cores"] >= 1 and report["machine"]["tensorflow"] == tf.__version__
    assert report["config"]["batch_sizes"] == [4, 8] and report["config"]["timed_steps"] == 2
    assert [r["batch_size"] for r in report["results"]] == [4, 8]
    for results in report["results"]:
        assert BENCH_KEYS | {"pipeline", "ratios", "batch_size", "other_processes_cpu_share"} == set(results)
        assert 0 <= results["other_processes_cpu_share"] <= 1
        for key in BENCH_KEYS:
            entry = results[key]
            assert len(entry["ms_per_step_all"]) == 2 and entry["ms_per_step"] > 0
            assert entry["images_per_second"] == pytest.approx(results["batch_size"] * 1000 / entry["ms_per_step"])
            assert entry["peak_rss_mib"] > 0 and entry["first_step_ms"] > 0
        assert results["pipeline"]["images_per_second"] > 0 and results["pipeline"]["batches"] == 3
        ratios = results["ratios"]
        assert ratios["train_vs_reference"] == pytest.approx(
            results["capsrun_train"]["images_per_second"] / results["reference_train"]["images_per_second"])
        assert {"eval_vs_reference", "train_of_conv_bound", "pipeline_vs_train"} <= set(ratios)
    tiny = CapsNet(conv1_filters=8, primary_maps=2, decoder_units=(16,))
    tiny.build_for_inputs()
    assert report["parameters"] == tiny.count_params()


def test_bench_command_checks_its_config_before_measuring(tmp_path):
    for args, message in [
        (["timed_steps=0"], "timed_steps must be >= 1"),
        (["batch_sizes=[]"], "batch_sizes must be a non-empty list"),
        (["model=baseline_cnn"], "capsrun bench measures CapsNets"),
        (["timed_step=3"], "timed_step"),
        (["output=/proc/nope/bench.json"], "cannot write /proc/nope/bench.json"),
    ]:
        result = run_cli("bench", *args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert message in last_stderr_line(result), (args, last_stderr_line(result))
    assert not (tmp_path / "bench.json").exists()
