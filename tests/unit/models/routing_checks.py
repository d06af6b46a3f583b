"""Shared checks of the routing tests (tests/unit/models/test_routing_*.py): votes that route
far from uniformly, the NumPy squash of tests.helpers, central finite differences of a routing layer in float64,
and one training step plus a checkpoint round trip of the real CapsNet with a routing."""
import numpy as np
import tensorflow as tf

from capsrun.models.base import InputSpec
from capsrun.models.registry import build_model
from capsrun.models.routing import get_routing
from tests.conftest import compose_config
from tests.helpers import numpy_squash  # noqa: F401  (re-exported: the routing tests import it from here)

SHAPE = (2, 4, 6, 5)
"""Votes [B, J, I, D] of the small tests: 2 examples, 4 parents, 6 inputs, 5 dimensions."""


def make_votes(seed=0, shape=SHAPE, scale=1.5, dtype=np.float64):
    """Votes [B, J, I, D] whose inputs agree strongly with some parents: each parent j gets a
    random direction, input i votes along it with a weight that varies a lot over (i, j), plus
    noise; times `scale`. Agreement-based routings then move far from uniform coupling."""
    rng = np.random.default_rng(seed)
    batch, parents, inputs, dims = shape
    direction = rng.normal(size=(batch, parents, 1, dims))
    weight = rng.gamma(0.5, 2.0, size=(batch, parents, inputs, 1))
    votes = direction * weight + 0.3 * rng.normal(size=shape)
    return (scale * votes).astype(dtype)


def numpy_softmax(logits, axis):
    exponentials = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return exponentials / exponentials.sum(axis=axis, keepdims=True)


def make_layer(name, iterations, dtype="float64", votes_shape=SHAPE, **options):
    """A built routing layer `name` of `dtype`."""
    layer = get_routing(name)(iterations=iterations, dtype=dtype, **options)
    layer(tf.zeros(votes_shape, dtype=dtype))
    return layer


def randomize_weights(layer, seed=0, scale=0.3):
    """Sets every weight of `layer` to a random value (ones + noise for a LayerNorm gamma)."""
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        base = 1.0 if variable.path.endswith("gamma") else 0.0
        variable.assign((base + scale * rng.normal(size=variable.shape)).astype(variable.dtype))


class Probe:
    """A fixed random linear read-out L = sum(P * parents) + sum(C * coupling), so that every
    output entry of a routing enters its gradient."""

    def __init__(self, shape=SHAPE, seed=7, dtype=np.float64):
        rng = np.random.default_rng(seed)
        batch, parents, inputs, dims = shape
        self.on_parents = tf.constant(rng.normal(size=(batch, parents, dims)), dtype)
        self.on_coupling = tf.constant(rng.normal(size=(batch, parents, inputs)), dtype)

    def __call__(self, outputs):
        parents, coupling = outputs
        return tf.reduce_sum(self.on_parents * parents) + tf.reduce_sum(self.on_coupling * coupling)


def autodiff_gradients(layer, votes, probe):
    """d probe / d votes and d probe / d every trainable weight of `layer` (tf.GradientTape)."""
    votes = tf.constant(votes)
    with tf.GradientTape() as tape:
        tape.watch(votes)
        loss = probe(layer(votes))
    gradients = tape.gradient(loss, [votes, *layer.trainable_weights])
    return [g.numpy() for g in gradients]


def numeric_gradients(layer, votes, probe, step=1e-6):
    """The same gradients by central finite differences, one entry at a time (float64)."""

    def loss_at(values):
        return float(probe(layer(tf.constant(values))))

    d_votes = np.zeros_like(votes)
    for index in np.ndindex(votes.shape):
        plus, minus = votes.copy(), votes.copy()
        plus[index] += step
        minus[index] -= step
        d_votes[index] = (loss_at(plus) - loss_at(minus)) / (2 * step)
    results = [d_votes]
    for variable in layer.trainable_weights:
        original = variable.numpy()
        d_weight = np.zeros_like(original)
        for index in np.ndindex(original.shape):
            for sign in (1, -1):
                shifted = original.copy()
                shifted[index] += sign * step
                variable.assign(shifted)
                d_weight[index] += sign * loss_at(votes) / (2 * step)
        variable.assign(original)
        results.append(d_weight)
    return results


def assert_gradients_match_finite_differences(layer, votes, probe=None, rtol=1e-6, atol=1e-8):
    """Autodiff (or hand-written) gradients of a float64 routing layer equal central differences."""
    probe = probe or Probe(votes.shape)
    analytic = autodiff_gradients(layer, votes, probe)
    numeric = numeric_gradients(layer, votes, probe)
    assert len(analytic) == 1 + len(layer.trainable_weights)
    for got, expected in zip(analytic, numeric):
        assert np.abs(expected).max() > 1e-3  # every gradient is exercised
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol * max(1.0, np.abs(expected).max()))


def build_capsnet(*overrides):
    """The CapsNet of the smoke config with overrides, built for 28x28x1 images and 10 classes."""
    cfg = compose_config(*overrides)
    return build_model(cfg.model, cfg.loss, InputSpec((28, 28, 1), 10, 1))


def train_one_step_and_round_trip(tmp_path, routing, *overrides):
    """Builds the smoke CapsNet with `model.routing=routing`, takes one Adam step on a small batch
    (every trainable variable gets a finite, not-None gradient), saves a tf.train.Checkpoint,
    restores it into a freshly built model and checks that every variable and the outputs match.
    Returns the trained model's checkpoint variable names (tf.train.list_variables)."""
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(size=(4, 28, 28, 1)), tf.float32)
    labels = tf.constant([0, 3, 5, 9], tf.int32)
    model = build_capsnet(f"model.routing={routing}", *overrides)
    optimizer = tf.keras.optimizers.Adam(1e-3)
    with tf.GradientTape() as tape:
        outputs = model(images, labels, training=True)
        loss = tf.reduce_mean(model.compute_losses(outputs, labels, images)["total"])
    variables = model.trainable_variables
    gradients = tape.gradient(loss, variables)
    assert np.isfinite(float(loss))
    for variable, gradient in zip(variables, gradients):
        assert gradient is not None, variable.path
        assert np.all(np.isfinite(gradient.numpy())), variable.path
    before = [v.numpy() for v in variables]
    optimizer.apply_gradients(zip(gradients, variables))
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, variables))

    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    restored = build_capsnet(f"model.routing={routing}", *overrides)
    tf.train.Checkpoint(model=restored).restore(path).assert_existing_objects_matched()
    assert [v.path for v in restored.weights] == [v.path for v in model.weights]
    for original, copy in zip(model.weights, restored.weights):
        np.testing.assert_array_equal(copy.numpy(), original.numpy(), err_msg=original.path)
    np.testing.assert_array_equal(restored(images)["scores"].numpy(), model(images)["scores"].numpy())
    return [name for name, _ in tf.train.list_variables(path)]
