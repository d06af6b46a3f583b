"""The CapsNet: size, interface, masking of the reconstruction, sizes derived from the input shape."""
import numpy as np
import pytest
import tensorflow as tf

from capsrun.models.capsnet import CapsNet
from tests.conftest import compose_config
from tests.helpers import build


def test_default_model_has_the_papers_8215568_parameters():
    cfg = compose_config(experiment=None)
    model = build(cfg)
    assert model.count_params() == 8_215_568
    assert model.digit_caps.kernel.shape == (1152, 10, 16, 8)


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_any_batch_size_gives_capsules_lengths_and_reconstructions(batch):
    model = CapsNet(conv1_filters=8, primary_maps=2, decoder_units=(16,))
    images = tf.random.stateless_uniform([batch, 28, 28, 1], seed=[0, batch])
    outputs = model(images)
    assert outputs["capsules"].shape == (batch, 10, 16)
    assert outputs["scores"].shape == (batch, 10)
    assert outputs["reconstructions"].shape == (batch, 28, 28, 1)
    np.testing.assert_allclose(outputs["scores"].numpy(), np.linalg.norm(outputs["capsules"].numpy(), axis=-1),
                               rtol=1e-3, atol=1e-3)


def test_reconstruction_depends_only_on_the_chosen_capsule():
    model = CapsNet(conv1_filters=8, primary_maps=2, decoder_units=(16,))
    capsules = tf.random.stateless_normal([2, 10, 16], seed=[3, 4])
    labels = tf.constant([3, 7])
    changed = tf.tensor_scatter_nd_update(capsules, [[0, 5], [1, 2]], tf.ones([2, 16]))
    np.testing.assert_allclose(model.reconstruct(capsules, labels).numpy(), model.reconstruct(changed, labels).numpy())
    moved = tf.tensor_scatter_nd_update(capsules, [[0, 3]], tf.ones([1, 16]))
    assert not np.allclose(model.reconstruct(capsules, labels).numpy()[0], model.reconstruct(moved, labels).numpy()[0])


def test_evaluation_masks_by_predicted_class_and_training_by_label():
    model = CapsNet(conv1_filters=8, primary_maps=2, decoder_units=(16,))
    images = tf.random.stateless_uniform([4, 28, 28, 1], seed=[5, 6])
    outputs = model(images)
    predicted = tf.argmax(outputs["scores"], axis=-1, output_type=tf.int32)
    np.testing.assert_allclose(outputs["reconstructions"].numpy(),
                               model.reconstruct(outputs["capsules"], predicted).numpy(), rtol=1e-6)
    other = (predicted + 1) % 10
    np.testing.assert_allclose(model(images, labels=other)["reconstructions"].numpy(),
                               model.reconstruct(outputs["capsules"], other).numpy(), rtol=1e-6)


@pytest.mark.parametrize("shape,primary,params", [
    ((28, 28, 1), 1152, 8_215_568),
    ((32, 32, 3), 2048, 62_464 + 5_308_672 + 2048 * 10 * 16 * 8 + 82_432 + 525_312 + 1024 * 3072 + 3072),
    ((40, 40, 1), 4608, 20_992 + 5_308_672 + 4608 * 10 * 16 * 8 + 82_432 + 525_312 + 1024 * 1600 + 1600),
])
def test_model_is_derived_from_the_input_shape(shape, primary, params):
    model = build(compose_config(experiment=None), shape, 10)
    assert model.digit_caps.kernel.shape == (primary, 10, 16, 8)
    assert model.count_params() == params
    assert model(np.zeros((2, *shape), np.float32))["reconstructions"].shape == (2, *shape)
