"""Efficient-CapsNet's self-attention routing (`model.routing=self_attention`): NumPy reference
with the full I x I self-attention matrices, both squashes, finite differences in the votes and
the learned prior, `model.routing_squash` checks, and training inside the real CapsNet."""
import numpy as np
import pytest
import tensorflow as tf

from capsrun.config.validation import validate
from capsrun.errors import CapsrunError
from capsrun.models.routing.self_attention import SQUASHES, efficient_squash
from tests.conftest import compose_config
from tests.unit.models.routing_checks import (
    assert_gradients_match_finite_differences,
    build_capsnet,
    make_layer,
    make_votes,
    numpy_softmax,
    numpy_squash,
    randomize_weights,
    train_one_step_and_round_trip,
)


def numpy_efficient_squash(s):
    """(1 - 1 / exp(|s|)) s / |s| along the last axis (Efficient-CapsNet, utils/layers.py Squash)."""
    norm = np.sqrt(np.sum(s * s, axis=-1, keepdims=True))
    return (1 - 1 / np.exp(norm)) * s / norm


def numpy_self_attention(votes, prior, squash):
    """A_j = U_j U_j^T / sqrt(D) [I, I] per example and parent, summed over its second index,
    softmax over the parents, plus the prior b [J, I], s_j = sum_i c_ij u_hat_j|i, v = squash(s)."""
    batch, parents, inputs, dims = votes.shape
    logits = np.empty((batch, parents, inputs))
    for b in range(batch):
        for j in range(parents):
            attention = votes[b, j] @ votes[b, j].T / np.sqrt(dims)  # [I, I]
            logits[b, j] = attention.sum(axis=1)
    coupling = numpy_softmax(logits, axis=1) + prior[None]
    return squash(np.einsum("bji,bjid->bjd", coupling, votes)), coupling


@pytest.mark.parametrize("squash, numpy_version", [("paper", numpy_squash), ("efficient", numpy_efficient_squash)])
def test_self_attention_matches_numpy(squash, numpy_version):
    votes = make_votes(seed=1, scale=1.5)
    layer = make_layer("self_attention", 3, squash=squash)
    randomize_weights(layer, seed=4, scale=0.1)
    parents, coupling = layer(tf.constant(votes))
    prior = layer.log_prior.numpy()
    expected_parents, expected_coupling = numpy_self_attention(votes, prior, numpy_version)
    np.testing.assert_allclose(parents.numpy(), expected_parents, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(coupling.numpy(), expected_coupling, rtol=1e-6, atol=1e-9)
    attention = coupling.numpy() - prior  # the softmax part: a distribution over the parents, far from uniform
    np.testing.assert_allclose(attention.sum(axis=1), 1.0, rtol=1e-12)
    assert np.abs(attention - 0.25).max() > 0.5


def test_self_attention_prior_is_created_in_build_with_zeros_and_shape_parents_by_inputs():
    layer = make_layer("self_attention", 3)
    assert [v.path.split("/")[-1] for v in layer.trainable_weights] == ["log_prior"]
    assert layer.log_prior.shape == (4, 6) and layer.log_prior.dtype == "float64"
    np.testing.assert_array_equal(layer.log_prior.numpy(), 0.0)


def test_self_attention_ignores_iterations():
    votes = tf.constant(make_votes(seed=5))
    one, three = make_layer("self_attention", 1)(votes), make_layer("self_attention", 3)(votes)
    for a, b in zip(one, three):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("squash", sorted(SQUASHES))
def test_self_attention_gradients_match_finite_differences_in_votes_and_prior(squash):
    layer = make_layer("self_attention", 3, squash=squash)
    randomize_weights(layer, seed=6, scale=0.1)
    assert_gradients_match_finite_differences(layer, make_votes(seed=2, scale=1.5))


def test_efficient_squash_matches_the_formula_and_is_finite_at_zero():
    s = make_votes(seed=3)[0, 0]
    np.testing.assert_allclose(efficient_squash(tf.constant(s)).numpy(), numpy_efficient_squash(s), rtol=1e-6)
    zero = tf.zeros((3, 5), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(zero)
        squashed = efficient_squash(zero)
    assert np.all(squashed.numpy() == 0) and np.all(np.isfinite(tape.gradient(squashed, zero).numpy()))


def test_unknown_squash_is_rejected():
    with pytest.raises(ValueError, match="unknown squash"):
        make_layer("self_attention", 3, squash="hinton")


def test_routing_squash_is_checked_by_validation():
    validate(compose_config("model.routing=self_attention", "model.routing_squash=efficient"))
    with pytest.raises(CapsrunError, match="model.routing_squash must be paper or efficient"):
        validate(compose_config("model.routing=self_attention", "model.routing_squash=hinton"))
    with pytest.raises(CapsrunError, match="needs model.routing=self_attention"):
        validate(compose_config("model.routing=dynamic", "model.routing_squash=efficient"))
    assert set(SQUASHES) == {"paper", "efficient"}  # the names validation accepts


def test_capsnet_passes_routing_squash_to_the_router():
    model = build_capsnet("model.routing=self_attention", "model.routing_squash=efficient")
    assert model.digit_caps.router.squash == "efficient"
    assert model.digit_caps.get_config()["routing_squash"] == "efficient"
    assert build_capsnet("model.routing=self_attention").digit_caps.router.squash == "paper"


@pytest.mark.parametrize("squash", ["paper", "efficient"])
def test_capsnet_with_self_attention_routing_trains_and_round_trips(tmp_path, squash):
    names = train_one_step_and_round_trip(tmp_path, "self_attention", f"model.routing_squash={squash}")
    routing_names = [name for name in names if "/router/" in name]
    assert routing_names == ["model/digit_caps/router/log_prior/.ATTRIBUTES/VARIABLE_VALUE"]


def test_the_default_capsnet_keeps_its_checkpoint_variable_names(tmp_path):
    """Passing `routing_squash` through DigitCaps adds nothing the checkpoint of a dynamic-routing model holds."""
    path = tf.train.Checkpoint(model=build_capsnet()).save(str(tmp_path / "ckpt"))
    names = [name.replace("/.ATTRIBUTES/VARIABLE_VALUE", "") for name, _ in tf.train.list_variables(path)]
    assert names == [
        "_CHECKPOINTABLE_OBJECT_GRAPH", "model/conv1/_kernel", "model/conv1/bias", "model/decoder/fc1/_kernel",
        "model/decoder/fc1/bias", "model/decoder/fc2/_kernel", "model/decoder/fc2/bias",
        "model/decoder/output_layer/_kernel", "model/decoder/output_layer/bias", "model/digit_caps/kernel",
        "model/primary_caps/conv/_kernel", "model/primary_caps/conv/bias", "save_counter",
    ]
