"""Checkpoints: a model-only checkpoint holds every weight of the model."""
import pytest
import tensorflow as tf

from capsrun.training.checkpoints import saved_variable_count
from tests.conftest import compose_config
from tests.helpers import build


@pytest.mark.parametrize("name", ["capsnet", "baseline_cnn"])
def test_a_model_only_checkpoint_holds_every_weight(tmp_path, name):
    cfg = compose_config(f"model={name}", "model.cnn_channels=[4,4,2]", "model.fc_units=[8,4]")
    model = build(cfg)
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    assert saved_variable_count(path) == len(model.weights)
    assert len(tf.train.list_variables(path)) == len(model.weights) + 2  # + save counter, object graph
