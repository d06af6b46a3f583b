"""Max-min routing (`model.routing=max_min`): NumPy reference of Procedure 1 with max-min
normalised coupling (as Zhao et al. give it, and renormalised to sum to 1 over the parents),
finite differences, and training inside the real CapsNet."""
import numpy as np
import pytest
import tensorflow as tf

from capsrun.config.validation import validate
from capsrun.errors import CapsrunError
from capsrun.models.ops import EPSILON
from capsrun.models.routing.max_min import (
    LOWER_BOUND,
    UPPER_BOUND,
    max_min_excess,
    max_min_normalize,
    renormalized_max_min,
)
from tests.conftest import compose_config
from tests.unit.models.routing_checks import (
    assert_gradients_match_finite_differences,
    build_capsnet,
    make_layer,
    make_votes,
    numpy_squash,
    train_one_step_and_round_trip,
)


def numpy_max_min(votes, iterations, renormalize, lower=0.01, upper=1.0):
    """Routing-by-agreement, one example and one input capsule at a time, with
    c_i = lb + (ub - lb) (b_i - min b_i) / (max b_i - min b_i) over the parents, and c_i = lb
    while all b_i are equal (b = 0 at the start); renormalize: c_i / sum_j c_ij (so 1 / J while
    all b_i are equal). votes [B, J, I, D] float64."""
    batch, parents, inputs, _ = votes.shape
    all_v, all_c = [], []
    for b in range(batch):
        u = votes[b]  # [J, I, D]
        logits = np.zeros((parents, inputs))
        for r in range(iterations):
            c = np.empty((parents, inputs))
            for i in range(inputs):
                low, high = logits[:, i].min(), logits[:, i].max()
                c[:, i] = lower if high == low else lower + (upper - lower) * (logits[:, i] - low) / (high - low)
                if renormalize:
                    c[:, i] /= c[:, i].sum()
            v = numpy_squash(np.einsum("ji,jid->jd", c, u))
            if r < iterations - 1:
                logits = logits + np.einsum("jid,jd->ji", u, v)
        all_v.append(v)
        all_c.append(c)
    return np.stack(all_v), np.stack(all_c)


def test_bounds_are_the_published_ones():
    assert (LOWER_BOUND, UPPER_BOUND) == (0.01, 1.0)


@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("iterations", [1, 2, 3, 5])
def test_max_min_matches_numpy(iterations, renormalize):
    votes = make_votes(seed=1, scale=2.0)
    parents, coupling = make_layer("max_min", iterations, renormalize=renormalize)(tf.constant(votes))
    expected_parents, expected_coupling = numpy_max_min(votes, iterations, renormalize)
    np.testing.assert_allclose(parents.numpy(), expected_parents, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(coupling.numpy(), expected_coupling, rtol=1e-6, atol=1e-9)
    c = coupling.numpy()
    parents_count = c.shape[1]
    if iterations == 1:  # all logits 0
        np.testing.assert_allclose(c, 1 / parents_count if renormalize else LOWER_BOUND, rtol=1e-12)
    elif renormalize:  # a distribution over the parents, best / worst = ub / lb for every input
        np.testing.assert_allclose(c.sum(axis=1), 1.0, rtol=1e-12)
        np.testing.assert_allclose(c.max(axis=1) / c.min(axis=1), UPPER_BOUND / LOWER_BOUND, rtol=1e-9)
    else:  # per input capsule, over the parents: the worst-agreeing gets lb, the best ub
        np.testing.assert_allclose(c.min(axis=1), LOWER_BOUND, rtol=1e-12)
        np.testing.assert_allclose(c.max(axis=1), UPPER_BOUND, rtol=1e-12)
        assert np.abs(c.sum(axis=1) - 1).max() > 0.5  # not a distribution over the parents


@pytest.mark.parametrize("renormalize", [True, False])
def test_max_min_routes_far_from_uniform(renormalize):
    coupling = make_layer("max_min", 3, renormalize=renormalize)(tf.constant(make_votes(seed=1, scale=2.0)))[1].numpy()
    top = coupling.max(axis=1, keepdims=True)
    middle = (coupling > 0.1 * top) & (coupling < 0.9 * top)
    assert middle.mean() < 0.5  # most couplings are pushed to the bounds


def test_renormalized_max_min_is_not_the_softmax():
    votes = tf.constant(make_votes(seed=1, scale=2.0))
    max_min = make_layer("max_min", 3, renormalize=True)(votes)[1].numpy()
    dynamic = make_layer("dynamic", 3)(votes)[1].numpy()
    assert np.abs(max_min - dynamic).max() > 0.05
    # the max-min ratio ub / lb holds whatever the logits' scale; the softmax's follows it
    assert (max_min.max(axis=1) / max_min.min(axis=1)).min() > 0.99 * UPPER_BOUND / LOWER_BOUND


def plain_normalize(logits):
    """The max-min formula as plain TensorFlow ops, differentiated by autodiff."""
    smallest = tf.reduce_min(logits, axis=1, keepdims=True)
    spread = tf.maximum(tf.reduce_max(logits, axis=1, keepdims=True) - smallest, EPSILON)
    return LOWER_BOUND + (UPPER_BOUND - LOWER_BOUND) * (logits - smallest) / spread


def plain_renormalize(logits):
    """The renormalised max-min coupling as plain TensorFlow ops, differentiated by autodiff."""
    coupling = plain_normalize(logits)
    return coupling / tf.reduce_sum(coupling, axis=1, keepdims=True)


@pytest.mark.parametrize("plain, fast",
                         [(plain_normalize, max_min_normalize), (plain_renormalize, renormalized_max_min)],
                         ids=["zhao", "renormalized"])
@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_written_out_normalisation_gradient_matches_autodiff(dtype, tolerance, plain, fast):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 5, 7)) * 4.0
    logits[0, :, 2] = 1.5  # one input capsule whose parents all agree equally: the EPSILON floor
    logits[1, :, 4] = rng.normal(size=5) * 2e-8  # distinct, but closer than EPSILON: floored too
    logits = tf.constant(logits.astype(dtype))
    upstream = tf.constant(rng.normal(size=(3, 5, 7)).astype(dtype))
    results = []
    for normalize in (plain, fast):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            coupling = normalize(logits)
        results.append((coupling.numpy(), tape.gradient(coupling, logits, output_gradients=upstream).numpy()))
    (plain_c, plain_grad), (fast_c, fast_grad) = results
    np.testing.assert_allclose(fast_c, plain_c, rtol=tolerance, atol=tolerance)
    # gradients through the floor are (ub - lb) / EPSILON large: compare relative to the largest
    np.testing.assert_allclose(fast_grad, plain_grad, rtol=0, atol=tolerance * np.abs(plain_grad).max())
    assert np.abs(plain_grad[0, :, 2]).max() > 1e3  # the floored columns were exercised
    assert 0 < np.ptp(logits.numpy()[1, :, 4]) < EPSILON and np.abs(plain_grad[1, :, 4]).max() > 1e3
    if fast is max_min_normalize:
        excess = max_min_excess(logits).numpy()
        np.testing.assert_allclose(excess + LOWER_BOUND, plain_c, rtol=tolerance, atol=tolerance)
    else:  # equal logits give 1 / J exactly (no cancellation through the floor)
        np.testing.assert_allclose(fast_c[0, :, 2], 1 / 5, rtol=1e-6)


@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("iterations", [2, 3])
def test_max_min_gradients_match_finite_differences(iterations, renormalize):
    assert_gradients_match_finite_differences(make_layer("max_min", iterations, renormalize=renormalize),
                                              make_votes(seed=2, scale=2.0))


@pytest.mark.parametrize("renormalize", [True, False])
def test_max_min_has_finite_gradients_for_zero_votes(renormalize):
    votes = tf.zeros((2, 4, 6, 5), tf.float32)
    layer = make_layer("max_min", 3, dtype="float32", renormalize=renormalize)
    with tf.GradientTape() as tape:
        tape.watch(votes)
        parents, coupling = layer(votes)
        loss = tf.reduce_sum(parents) + tf.reduce_sum(coupling)
    assert np.all(np.isfinite(tape.gradient(loss, votes).numpy()))


def test_capsnet_with_max_min_routing_trains_and_round_trips(tmp_path):
    names = train_one_step_and_round_trip(tmp_path, "max_min")
    assert not [name for name in names if "/router/" in name]  # no weights of its own


def test_capsnet_passes_max_min_renormalize_to_its_routing(tmp_path):
    names = train_one_step_and_round_trip(tmp_path, "max_min", "model.max_min_renormalize=false")
    assert names
    model = build_capsnet("model.routing=max_min", "model.max_min_renormalize=false")
    assert model.digit_caps.router.renormalize is False
    assert model.get_config()["max_min_renormalize"] is False
    assert build_capsnet("model.routing=max_min").digit_caps.router.renormalize is True


def test_max_min_renormalize_false_needs_max_min_routing():
    validate(compose_config("model.routing=max_min", "model.max_min_renormalize=false"))
    validate(compose_config("model.routing=dynamic"))  # the default (true) is ignored by other routings
    with pytest.raises(CapsrunError, match="needs model=capsnet and model.routing=max_min"):
        validate(compose_config("model.routing=dynamic", "model.max_min_renormalize=false"))
