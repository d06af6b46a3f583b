"""Model size and interface, margin and reconstruction losses."""
import numpy as np
import pytest
import tensorflow as tf

from capsrun.models.capsnet import CapsNet
from capsrun.models.losses import CapsuleLoss, margin_loss, reconstruction_loss
from capsrun.training.checkpoints import saved_variable_count
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


def test_margin_loss_matches_hand_computed_values():
    lengths = tf.constant([[0.95, 0.05, 0.5], [0.2, 0.7, 0.1]])
    targets = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # example 1: present 0.95 > 0.9 -> 0; absent 0.05 < 0.1 -> 0; absent 0.5: 0.5 * 0.4^2 = 0.08
    # example 2: absent 0.2: 0.5 * 0.1^2 = 0.005; present 0.7: 0.2^2 = 0.04; absent 0.1 -> 0
    loss = margin_loss(lengths, targets, m_plus=0.9, m_minus=0.1, lambda_=0.5).numpy()
    np.testing.assert_allclose(loss, [0.08, 0.045], rtol=1e-5)


def test_reconstruction_loss_is_the_sum_of_squared_errors_per_image():
    images = tf.zeros([2, 28, 28, 1])
    recon = tf.fill([2, 28, 28, 1], 0.5)
    np.testing.assert_allclose(reconstruction_loss(images, recon).numpy(), [784 * 0.25] * 2, rtol=1e-6)


def test_total_loss_weights_the_summed_reconstruction_error(smoke_cfg):
    lengths = tf.constant([[0.95] + [0.0] * 9])
    images, recon = tf.zeros([1, 28, 28, 1]), tf.fill([1, 28, 28, 1], 0.5)
    losses = CapsuleLoss.from_config(smoke_cfg.loss)(lengths, tf.constant([0]), images, recon)
    np.testing.assert_allclose(losses["total"].numpy(), [0.0005 * 196.0], rtol=1e-5)
    no_recon = compose_config("loss.recon_weight=0").loss
    assert float(CapsuleLoss.from_config(no_recon)(lengths, tf.constant([0]), images, recon)["total"][0]) == 0.0


@pytest.mark.parametrize("name", ["capsnet", "baseline_cnn"])
def test_a_model_only_checkpoint_holds_every_weight(tmp_path, name):
    cfg = compose_config(f"model={name}", "model.cnn_channels=[4,4,2]", "model.fc_units=[8,4]")
    model = build(cfg)
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    assert saved_variable_count(path) == len(model.weights)
    assert len(tf.train.list_variables(path)) == len(model.weights) + 2  # + save counter, object graph
