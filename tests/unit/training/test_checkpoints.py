"""Checkpoints: a model-only checkpoint holds every weight of the model; damaged checkpoint files
are one-line errors that name them."""
from pathlib import Path

import pytest
import tensorflow as tf

from capsrun.errors import CapsrunError
from capsrun.training.checkpoints import latest_checkpoint, saved_variable_count
from tests.conftest import compose_config
from tests.helpers import build


@pytest.mark.parametrize("name", ["capsnet", "baseline_cnn"])
def test_a_model_only_checkpoint_holds_every_weight(tmp_path, name):
    cfg = compose_config(f"model={name}", "model.cnn_channels=[4,4,2]", "model.fc_units=[8,4]")
    model = build(cfg)
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    assert saved_variable_count(path) == len(model.weights)
    assert len(tf.train.list_variables(path)) == len(model.weights) + 2  # + save counter, object graph


def _saved_run(tmp_path):
    """A run folder's checkpoints/last with one checkpoint of the smoke model; returns its prefix."""
    model = build(compose_config())
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(tmp_path / "checkpoints" / "last"), 3)
    return manager.save(checkpoint_number=8)


@pytest.mark.parametrize("damage", ["truncated data", "truncated index"])
def test_a_damaged_checkpoint_is_a_one_line_error_naming_it(tmp_path, damage):
    prefix = _saved_run(tmp_path)
    target = Path(prefix + (".index" if damage == "truncated index" else ".data-00000-of-00001"))
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 3])
    with pytest.raises(CapsrunError) as error:
        saved_variable_count(prefix)
    message = str(error.value)
    assert message.startswith(f"checkpoint {prefix} is damaged") and "\n" not in message


def test_a_damaged_checkpoint_index_file_is_a_one_line_error(tmp_path):
    _saved_run(tmp_path)
    (tmp_path / "checkpoints" / "last" / "checkpoint").write_bytes(b"model_checkpoint_path: \"ckpt-8\nall_\xff")
    with pytest.raises(CapsrunError, match=r"checkpoints/last/checkpoint is damaged"):
        latest_checkpoint(tmp_path, "last")
