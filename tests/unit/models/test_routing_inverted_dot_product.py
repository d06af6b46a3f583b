"""Inverted dot-product attention routing (`model.routing=inverted_dot_product`): NumPy reference of
Procedure 1 of Tsai et al. (2020) as the authors' code runs it, finite differences in the votes and
the LayerNorm's gamma and beta, and training inside the real CapsNet."""
import numpy as np
import pytest
import tensorflow as tf

from tests.unit.models.routing_checks import (
    assert_gradients_match_finite_differences,
    make_layer,
    make_votes,
    numpy_softmax,
    randomize_weights,
    train_one_step_and_round_trip,
)


def numpy_layer_norm(x, gamma, beta, epsilon=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return gamma * (x - mean) / np.sqrt(variance + epsilon) + beta


def numpy_inverted_dot_product(votes, iterations, gamma, beta):
    """Parent poses p = 0 at the start; each round: a_ij = p_j . u_hat_j|i / sqrt(D), r = softmax
    over the parents, p_j = LayerNorm(sum_i r_ij u_hat_j|i). votes [B, J, I, D] float64."""
    dims = votes.shape[-1]
    poses = np.zeros((votes.shape[0], votes.shape[1], dims))
    for _ in range(iterations):
        agreement = np.einsum("bjd,bjid->bji", poses, votes) / np.sqrt(dims)
        coupling = numpy_softmax(agreement, axis=1)
        poses = numpy_layer_norm(np.einsum("bji,bjid->bjd", coupling, votes), gamma, beta)
    return poses, coupling


def norm_weights(layer):
    weights = {v.path.split("/")[-1]: v.numpy() for v in layer.trainable_weights}
    return weights["gamma"], weights["beta"]


def test_layer_norm_is_created_in_build_with_gamma_ones_and_beta_zeros():
    layer = make_layer("inverted_dot_product", 3)
    gamma, beta = norm_weights(layer)
    assert gamma.shape == beta.shape == (5,) and gamma.dtype == np.float64
    np.testing.assert_array_equal(gamma, 1.0)
    np.testing.assert_array_equal(beta, 0.0)
    assert len(layer.trainable_weights) == 2


@pytest.mark.parametrize("iterations", [1, 2, 3, 4])
def test_inverted_dot_product_matches_numpy(iterations):
    votes = make_votes(seed=1, scale=1.5)
    layer = make_layer("inverted_dot_product", iterations)
    randomize_weights(layer, seed=3)
    parents, coupling = layer(tf.constant(votes))
    expected_parents, expected_coupling = numpy_inverted_dot_product(votes, iterations, *norm_weights(layer))
    np.testing.assert_allclose(parents.numpy(), expected_parents, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(coupling.numpy(), expected_coupling, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(coupling.numpy().sum(axis=1), 1.0, rtol=1e-12)
    if iterations == 1:
        np.testing.assert_array_equal(coupling.numpy(), 0.25)
    else:
        assert np.abs(coupling.numpy() - 0.25).max() > 0.5  # the votes do route


@pytest.mark.parametrize("iterations", [2, 3])
def test_inverted_dot_product_gradients_match_finite_differences_in_votes_gamma_and_beta(iterations):
    layer = make_layer("inverted_dot_product", iterations)
    randomize_weights(layer, seed=5)
    assert_gradients_match_finite_differences(layer, make_votes(seed=2, scale=1.5))


def test_capsnet_with_inverted_dot_product_routing_trains_and_round_trips(tmp_path):
    names = train_one_step_and_round_trip(tmp_path, "inverted_dot_product")
    assert sorted(name for name in names if "/router/" in name) == [
        "model/digit_caps/router/layer_norm/beta/.ATTRIBUTES/VARIABLE_VALUE",
        "model/digit_caps/router/layer_norm/gamma/.ATTRIBUTES/VARIABLE_VALUE",
    ]
