"""The fast path (capsrun's DigitCaps and `route` with its hand-written gradient) against the plain
reference CapsNet: same outputs, losses and gradients on the same weights. Also XLA and mixed
precision on CPU, and every routing layer against its plain form. Nothing here is timed."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from capsrun.models.base import InputSpec
from capsrun.models.capsnet import CapsNet
from capsrun.models.reference import PLAIN_ROUTINGS, ReferenceCapsNet, build_reference, plain_route
from capsrun.models.routing import ROUTINGS
from tests.conftest import compose_config
from tests.helpers import assert_same, build
from tests.unit.models.routing_checks import Probe, make_layer, make_votes, randomize_weights

SMALL = dict(conv1_filters=16, primary_maps=4, decoder_units=(32, 64))


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


def images_and_labels(batch, seed=0):
    images = tf.random.stateless_uniform([batch, 28, 28, 1], seed=[seed, 1])
    return images, tf.constant(np.arange(batch) % 10, dtype=tf.int32)


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



def test_fast_capsnet_equals_reference_at_the_default_shapes_with_routing_far_from_uniform():
    """As above with W scaled by 10: at the default initialisation the coupling coefficients stay
    near uniform and the gradient through them is below the tolerance; here it is not, so a fast
    path that dropped it (treated the coupling as constant) fails the gradient check."""
    cfg = compose_config(experiment=None)
    model = build(cfg)
    model.digit_caps.kernel.assign(model.digit_caps.kernel * 10.0)
    reference = build_reference(cfg.model, cfg.loss, InputSpec((28, 28, 1), 10))
    reference.copy_weights(model)
    images, labels = images_and_labels(4, seed=3)
    fast = gradients_of(model, images, labels, cfg.loss)
    plain = gradients_of(reference, images, labels, cfg.loss)
    assert_same(fast[0]["capsules"], plain[0]["capsules"], rtol=1e-4, atol_fraction=1e-5)
    assert_same(fast[1], plain[1], rtol=1e-5, atol_fraction=1e-6)
    for variable, fast_gradient, plain_gradient in zip(model.trainable_variables, fast[2], plain[2]):
        try:
            assert_same(fast_gradient, plain_gradient, rtol=1e-3, atol_fraction=1e-4)
        except AssertionError as error:
            raise AssertionError(f"gradient of {variable.path}: {error}") from None

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


@pytest.mark.parametrize("iterations", [1, 2, 3])
@pytest.mark.parametrize("name", sorted(ROUTINGS))
def test_routing_layer_equals_its_plain_form_in_values_and_gradients(name, iterations):
    """Every routing's layer (its fast form) against `plain_route` (the equations with autodiff)
    on the same float64 votes and random weights: parents, coupling, and the gradients of a random
    read-out of both with respect to the votes and every weight of the routing."""
    votes = tf.constant(make_votes(seed=iterations, scale=1.5))
    layer = make_layer(name, iterations, **({"squash": "efficient"} if name == "self_attention" else {}))
    randomize_weights(layer, seed=5, scale=0.2)
    probe = Probe(votes.shape)
    results = []
    for route in (layer, lambda values: plain_route(name, layer, values)):
        with tf.GradientTape() as tape:
            tape.watch(votes)
            outputs = route(votes)
            loss = probe(outputs)
        results.append([*outputs, *tape.gradient(loss, [votes, *layer.trainable_weights])])
    assert len(results[0]) == 3 + len(layer.trainable_weights)
    for fast, plain in zip(*results):
        assert fast.dtype == plain.dtype == tf.float64
        np.testing.assert_allclose(fast.numpy(), plain.numpy(), rtol=1e-9, atol=1e-12)
    if iterations > 1 and name != "uniform":  # the routing moved: the coupling path is exercised
        assert np.abs(results[0][1].numpy() - results[0][1].numpy().mean(axis=1, keepdims=True)).max() > 0.05


def test_plain_route_names_every_routing():
    assert set(PLAIN_ROUTINGS) == set(ROUTINGS)
    with pytest.raises(ValueError, match="no plain form of routing 'nope'"):
        plain_route("nope", None, None)
