"""The model and routing registries: every registered model fulfils the contract of
capsrun.models.base, has its YAML file, and every routing returns the documented shapes."""
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from omegaconf import OmegaConf

from capsrun.models.base import RECONSTRUCTIONS, SCORES, TOTAL, CapsuleModel, InputSpec, Model
from capsrun.models.registry import MODELS, build_model
from capsrun.models.routing import ROUTINGS, get_routing
from tests.conftest import REPO, compose_config

SMALL = ("model.cnn_channels=[4,4,2]", "model.fc_units=[8,4]")


def test_every_model_has_its_config_file_and_every_config_file_a_model():
    files = {path.stem: OmegaConf.load(path).name for path in Path(REPO / "conf" / "model").glob("*.yaml")}
    assert files == {name: name for name in MODELS}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("targets", [1, 2])
def test_every_model_fulfils_the_contract(name, targets):
    if name in ("baseline_cnn", "em_capsnet") and targets == 2:
        pytest.skip(f"{name} classifies one object per image (config validation refuses it)")
    cfg = compose_config(f"model={name}", *SMALL)
    model = build_model(cfg.model, cfg.loss, InputSpec((28, 28, 1), 10, targets))
    assert isinstance(model, Model)
    images = tf.random.uniform([3, 28, 28, 1], seed=1)
    labels = tf.constant([[1, 2], [3, 4], [5, 0]][:3] if targets == 2 else [1, 2, 3])
    outputs = model(images, labels=labels, training=True)
    assert outputs[SCORES].shape == (3, 10) and outputs[SCORES].dtype == tf.float32
    assert "lengths" not in outputs
    predicted = model.predict_labels(outputs[SCORES])
    assert predicted.dtype == tf.int32 and predicted.shape == ((3,) if targets == 1 else (3, 2))
    targets_images = images if targets == 1 else tf.stack([images, images], axis=1)
    losses = model.compute_losses(outputs, labels, targets_images)
    assert losses[TOTAL].shape == (3,) and all(value.shape == (3,) for value in losses.values())
    assert np.all(np.isfinite(losses[TOTAL].numpy()))
    if isinstance(model, CapsuleModel):
        assert outputs[RECONSTRUCTIONS].shape == ((3, 28, 28, 1) if targets == 1 else (3, 2, 28, 28, 1))


def test_the_baseline_cnn_has_no_capsules_to_visualize():
    cfg = compose_config("model=baseline_cnn", *SMALL)
    model = build_model(cfg.model, cfg.loss, InputSpec((28, 28, 1), 10))
    assert isinstance(model, Model) and not isinstance(model, CapsuleModel)


@pytest.mark.parametrize("name", sorted(ROUTINGS))
@pytest.mark.parametrize("iterations", [1, 3])
def test_every_routing_maps_votes_to_parents_and_couplings(name, iterations):
    votes = tf.random.normal([2, 10, 36, 16], seed=3)  # [B, J, I, D]
    parents, coupling = get_routing(name)(iterations=iterations)(votes)
    assert parents.shape == (2, 10, 16) and coupling.shape == (2, 10, 36)
    assert parents.dtype == coupling.dtype == tf.float32
    assert np.all(np.isfinite(parents.numpy())) and np.all(np.isfinite(coupling.numpy()))
    if name in ("dynamic", "uniform"):  # softmax couplings: each input's coupling sums to 1 over the parents
        np.testing.assert_allclose(tf.reduce_sum(coupling, axis=1).numpy(), 1.0, rtol=1e-5)


def test_an_unknown_routing_is_refused_before_anything_is_built():
    from capsrun.config.validation import validate
    from capsrun.errors import CapsrunError

    with pytest.raises(CapsrunError, match="model.routing must be one of dynamic"):
        validate(compose_config("model.routing=em"))
