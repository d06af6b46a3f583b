"""`.keras` files: every registered model and every routing round-trips through
`model.save("x.keras")` and `keras.saving.load_model` with the same config, weights and outputs,
the loss settings included. A model or routing added to MODELS or ROUTINGS is checked here
without any change to this file."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from capsrun.models.base import SCORES, TOTAL
from capsrun.models.registry import MODELS
from capsrun.models.routing import ROUTINGS, get_routing
from capsrun.models.saving import load_model
from tests.conftest import compose_config
from tests.helpers import build

SMALL = ("model.cnn_channels=[4,4,2]", "model.fc_units=[8,4]")  # the baseline CNN at a test's size


def perturbed(model):
    """`model` with every weight moved off its initial value (a prior of zeros included), so that a
    loaded model that kept its fresh weights cannot pass for one that read the file."""
    for index, weight in enumerate(model.weights):
        if "int" in str(weight.dtype):  # a counter (em_capsnet's training_step): moved by one
            weight.assign(weight + 1)
            continue
        noise = tf.random.stateless_normal(weight.shape, seed=[index, 7], dtype=weight.dtype)
        weight.assign(weight + 0.05 * noise)
    return model


def round_trip(model, tmp_path):
    path = tmp_path / "model.keras"
    model.save(path)
    return load_model(path)


def assert_same_model(model, loaded):
    assert type(loaded) is type(model)
    assert loaded.get_config() == model.get_config()
    assert [w.path for w in loaded.weights] == [w.path for w in model.weights]
    for saved, restored in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(restored.numpy(), saved.numpy(), err_msg=saved.path)
    images = tf.random.stateless_uniform([3, *model.image_shape], seed=[1, 2])
    np.testing.assert_allclose(loaded(images)[SCORES].numpy(), model(images)[SCORES].numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_round_trips_through_a_keras_file(name, tmp_path):
    cfg = compose_config(f"model={name}", *SMALL)
    model = perturbed(build(cfg))
    assert_same_model(model, round_trip(model, tmp_path))


@pytest.mark.parametrize("routing", sorted(ROUTINGS))
def test_a_capsnet_with_every_routing_round_trips_through_a_keras_file(routing, tmp_path):
    model = perturbed(build(compose_config(f"model.routing={routing}")))
    loaded = round_trip(model, tmp_path)
    assert type(loaded.digit_caps.router) is get_routing(routing)
    assert_same_model(model, loaded)


def test_the_efficient_squash_of_self_attention_round_trips(tmp_path):
    model = perturbed(build(compose_config("model.routing=self_attention", "model.routing_squash=efficient")))
    loaded = round_trip(model, tmp_path)
    assert loaded.digit_caps.router.squash == "efficient"
    assert_same_model(model, loaded)


@pytest.mark.parametrize("routing", sorted(ROUTINGS))
def test_every_routing_layer_is_rebuilt_from_its_config(routing):
    layer = get_routing(routing)(iterations=2, name="routing")
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is type(layer) and revived.get_config() == layer.get_config()


def test_the_loss_settings_round_trip(tmp_path):
    model = perturbed(build(compose_config("loss.m_plus=0.8", "loss.lambda_=0.25", "loss.recon_weight=0.5")))
    loaded = round_trip(model, tmp_path)
    assert loaded.loss_fn == model.loss_fn and loaded.loss_fn.recon_weight == 0.5
    images = tf.random.stateless_uniform([2, 28, 28, 1], seed=[3, 4])
    labels = tf.constant([1, 7])
    losses = [m.compute_losses(m(images, labels=labels), labels, images)[TOTAL].numpy() for m in (model, loaded)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)
