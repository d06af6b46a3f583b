"""Other data sets and models through the real `capsrun train`: image folders, MultiMNIST, the
baseline CNN."""
import json

import pytest

from tests.conftest import run_cli
from tests.helpers import make_image_tree


def test_folder_data_trains_one_epoch_through_the_cli(tmp_path):
    make_image_tree(tmp_path / "tree")
    run_dir = tmp_path / "run"
    result = run_cli("train", "experiment=smoke", "data=folder", f"data.path={tmp_path / 'tree'}",
                     "data.image_size=[29,29]", "data.val_size=12", "data.train_size=null", "batch_size=16",
                     f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_completed"] == 1


@pytest.mark.parametrize("overrides", [
    ["data=multimnist", "data.train_size=128", "data.val_size=32", "data.test_size=32"],
    ["model=baseline_cnn", "model.cnn_channels=[8,8,4]", "model.fc_units=[16,8]"],
])
def test_multimnist_capsnet_and_baseline_cnn_train_through_the_cli(tmp_path, overrides):
    run_dir = tmp_path / "run"
    result = run_cli("train", "experiment=smoke", *overrides, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and 0 <= metrics["val_accuracy"] <= 1
    history = metrics["history"][0]
    if "model=baseline_cnn" in overrides:
        assert "train_cross_entropy_loss" in history and "train_margin_loss" not in history
    else:
        assert history["train_reconstruction_loss"] > 0 and "train_margin_loss" in history
