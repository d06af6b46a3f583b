"""Efficient-CapsNet: the paper's parameter count, shapes, its layers, batch norm in training and
inference, a training step on real digits, checkpoints, and refused sizes."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from capsrun.config.validation import validate
from capsrun.data.pipeline import to_unit_range
from capsrun.data.splits import load_splits
from capsrun.errors import CapsrunError
from capsrun.models.efficient_capsnet import ConvBatchNormStack, DepthwisePrimaryCaps, EfficientCapsNet
from capsrun.models.layers import DigitCaps
from tests.conftest import compose_config
from tests.helpers import build

# By hand (the derivation is in capsrun/models/efficient_capsnet.py): convolutions with biases,
# batch-norm gamma and beta, the depthwise primary capsules, W and the self-attention prior.
CONVS = (5 * 5 * 1 * 32 + 32) + (3 * 3 * 32 * 64 + 64) + (3 * 3 * 64 * 64 + 64) + (3 * 3 * 64 * 128 + 128)
BN_TRAINABLE = 2 * (32 + 64 + 64 + 128)
PRIMARY = 9 * 9 * 128 + 128
DIGIT = 16 * 10 * 16 * 8 + 10 * 16
PAPER = 161_824  # Mazzia et al. 2021, Table 2 (Efficient-CapsNet, 161K); the authors' Keras summary
DECODER = (160 * 512 + 512) + (512 * 1024 + 1024) + (1024 * 784 + 784)
BN_MOVING = 2 * (32 + 64 + 64 + 128)


def _trainable(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


@pytest.fixture(scope="module")
def paper_model():
    return build(compose_config("model=efficient_capsnet", experiment=None))


def test_the_papers_161824_parameters_without_the_decoder_and_1573168_with_it(paper_model):
    assert CONVS + BN_TRAINABLE + PRIMARY + DIGIT == PAPER
    assert _trainable(paper_model.trainable_variables) - _trainable(paper_model.decoder.trainable_variables) == PAPER
    assert _trainable(paper_model.decoder.trainable_variables) == DECODER == 1_411_344
    assert _trainable(paper_model.trainable_variables) == 1_573_168
    assert paper_model.count_params() == 1_573_168 + BN_MOVING  # the moving statistics are not trainable
    assert paper_model.digit_caps.kernel.shape == (16, 10, 16, 8)
    assert paper_model.digit_caps.router.log_prior.shape == (10, 16)


def test_w_is_drawn_like_the_authors_he_normal(paper_model):
    # he_normal in their [J, I, D_in, D_out] layout: fan-in D_in * J * I = 1280, stddev sqrt(2 / 1280)
    # = 0.0395 (after truncation). Keras' fan-in of capsrun's [I, J, D_out, D_in] layout would give 0.028.
    kernel = paper_model.digit_caps.kernel.numpy()
    assert abs(kernel.std() - np.sqrt(2 / 1280)) < 0.002
    assert np.abs(kernel).max() <= 2 * np.sqrt(2 / 1280) / 0.87962566103423978 + 1e-6  # truncated at 2 stddev


@pytest.mark.parametrize("batch", [1, 5])
def test_shapes_of_every_stage(paper_model, batch):
    images = tf.random.stateless_uniform([batch, 28, 28, 1], seed=[1, batch])
    features = paper_model.features(images, training=False)
    assert features.shape == (batch, 9, 9, 128)
    primary = paper_model.primary_caps(features)
    assert primary.shape == (batch, 16, 8) and primary.dtype == tf.float32
    assert np.all(np.linalg.norm(primary.numpy(), axis=-1) < 1.0)
    outputs = paper_model(images)
    assert outputs["capsules"].shape == (batch, 10, 16)
    assert outputs["scores"].shape == (batch, 10)
    assert outputs["reconstructions"].shape == (batch, 28, 28, 1)
    np.testing.assert_allclose(outputs["scores"].numpy(), np.linalg.norm(outputs["capsules"].numpy(), axis=-1),
                               rtol=1e-3, atol=1e-3)


def test_primary_capsules_are_the_depthwise_convolution_grouped_and_squashed():
    layer = DepthwisePrimaryCaps(dim=4, kernel_size=3)
    features = tf.random.stateless_normal([2, 5, 5, 8], seed=[2, 3])
    capsules = layer(features).numpy()
    assert capsules.shape == (2, 3 * 3 * 8 // 4, 4)
    maps = layer.conv(features).numpy()  # [2, 3, 3, 8]: one 3x3 kernel per channel
    kernel = layer.conv.kernel.numpy()[:, :, :, 0]
    expected_map = np.einsum("bijc,ijc->bc", features.numpy()[:, 1:4, 2:5, :], kernel) + layer.conv.bias.numpy()
    np.testing.assert_allclose(maps[:, 1, 2, :], expected_map, rtol=1e-5, atol=1e-5)
    s = maps.reshape(2, -1, 4)
    norm = np.linalg.norm(s, axis=-1, keepdims=True)
    np.testing.assert_allclose(capsules, (1 - np.exp(-norm)) * s / norm, rtol=1e-4, atol=1e-6)


def test_batch_norm_uses_batch_statistics_when_training_and_moving_ones_at_inference():
    stack = ConvBatchNormStack([4], [3], [1])
    images = tf.random.stateless_uniform([6, 8, 8, 1], seed=[4, 5]) * 5.0 + 2.0
    stack(images, training=False)
    bn = stack.bn1
    before = bn.moving_mean.numpy().copy()
    trained = stack(images, training=True).numpy()
    assert abs(trained.mean(axis=(0, 1, 2))).max() < 1e-3  # normalised by the batch's own mean
    assert not np.allclose(bn.moving_mean.numpy(), before)  # moving statistics updated
    moved = bn.moving_mean.numpy().copy()
    relu = stack.conv1(images).numpy()
    inferred = stack(images, training=False).numpy()
    np.testing.assert_array_equal(bn.moving_mean.numpy(), moved)  # not updated at inference
    expected = (relu - moved) / np.sqrt(bn.moving_variance.numpy() + 1e-3) * bn.gamma.numpy() + bn.beta.numpy()
    np.testing.assert_allclose(inferred, expected, rtol=1e-4, atol=1e-4)


def test_evaluation_masks_by_the_prediction_and_training_by_the_label(paper_model):
    images = tf.random.stateless_uniform([4, 28, 28, 1], seed=[6, 7])
    outputs = paper_model(images)
    predicted = tf.argmax(outputs["scores"], axis=-1, output_type=tf.int32)
    np.testing.assert_allclose(outputs["reconstructions"].numpy(),
                               paper_model.reconstruct(outputs["capsules"], predicted).numpy(), rtol=1e-6)
    other = (predicted + 1) % 10
    np.testing.assert_allclose(paper_model(images, labels=other)["reconstructions"].numpy(),
                               paper_model.reconstruct(outputs["capsules"], other).numpy(), rtol=1e-6)


def test_a_few_training_steps_on_real_digits_lower_the_loss():
    cfg = compose_config("model=efficient_capsnet")
    keras.utils.set_random_seed(0)
    model = build(cfg)
    train = load_splits(cfg.data, cfg.seed).train
    images, labels = to_unit_range(train.images[:32]), tf.constant(train.labels[:32])
    optimizer = keras.optimizers.Adam(1e-3)

    def step():
        with tf.GradientTape() as tape:
            outputs = model(images, labels=labels, training=True)
            loss = tf.reduce_mean(model.compute_losses(outputs, labels, images)["total"])
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    losses = [float(step()) for _ in range(8)]
    assert losses[-1] < 0.85 * losses[0] and all(b < a for a, b in zip(losses, losses[1:])), losses


def test_a_checkpoint_restores_the_batch_norm_statistics(tmp_path):
    cfg = compose_config("model=efficient_capsnet", "model.decoder_units=[16]")
    model = build(cfg)
    model(tf.random.stateless_uniform([8, 28, 28, 1], seed=[8, 9]), training=True)  # moves the statistics
    assert not np.allclose(model.features.bn1.moving_mean.numpy(), 0.0)
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    fresh = build(cfg)
    tf.train.Checkpoint(model=fresh).restore(path).assert_consumed()
    assert len(fresh.weights) == len(model.weights)
    for saved, restored in zip(model.weights, fresh.weights):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy(), err_msg=saved.path)


def test_layers_round_trip_through_their_config():
    for layer in (ConvBatchNormStack([4, 8], [3, 3], [1, 2], name="s"), DepthwisePrimaryCaps(4, 3, 2, name="p"),
                  DigitCaps(10, 16, 1, routing="self_attention", routing_squash="efficient",
                            kernel_initializer="he_normal", name="d")):
        config = layer.get_config()
        again = type(layer).from_config(config)
        assert again.get_config() == config
    model = EfficientCapsNet(decoder_units=(8,))
    assert model.digit_caps.get_config()["kernel_initializer"]["config"]["mode"] == "fan_out"
    assert keras.saving.get_registered_object("capsrun>DepthwisePrimaryCaps") is DepthwisePrimaryCaps
    assert keras.saving.get_registered_object("capsrun>ConvBatchNormStack") is ConvBatchNormStack


def test_other_image_sizes_give_more_primary_capsules():
    model = build(compose_config("model=efficient_capsnet", "model.decoder_units=[8]"), (32, 32, 3), 10)
    assert model.digit_caps.kernel.shape == (3 * 3 * 16, 10, 16, 8)  # 32 -> 28 -> 26 -> 24 -> 11 -> 3
    assert model(np.zeros((2, 32, 32, 3), np.float32))["reconstructions"].shape == (2, 32, 32, 3)


def test_images_too_small_are_one_line_with_the_fix():
    with pytest.raises(CapsrunError, match="too small for its convolutions; use larger images"):
        build(compose_config("model=efficient_capsnet"), (16, 16, 1), 10)


@pytest.mark.parametrize("overrides,message", [
    (["model.efficient_conv_kernels=[5,3]"], "need one entry per convolution"),
    (["model.efficient_conv_strides=[1,1,0,2]"], "must all be >= 1"),
    (["model.primary_dim=7"], "choose a divisor of 128"),
])
def test_bad_sizes_are_refused_by_validation(overrides, message):
    with pytest.raises(CapsrunError, match=message):
        validate(compose_config("model=efficient_capsnet", *overrides))
