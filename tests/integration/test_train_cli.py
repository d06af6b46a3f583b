"""The real `capsrun` command line in subprocesses: a short training run and every bad input."""
import json
import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from capsrun.models.capsnet import CapsNet
from capsrun.models.cost import model_cost
from tests.conftest import last_stderr_line, run_cli

TRAIN_TAGS = {"train/loss", "train/margin_loss", "train/reconstruction_loss", "train/accuracy",
              "train/learning_rate", "train/images_per_second"}
VAL_TAGS = {"val/loss", "val/accuracy", "val/reconstructions"}


def read_tensorboard(folder):
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    events.Reload()
    return events


def test_train_one_epoch_leaves_checkpoints_metrics_and_tensorboard(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("train", "experiment=smoke", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_completed"] == 1
    for key in ("train_accuracy", "val_accuracy", "best_val_accuracy", "images_per_second"):
        assert isinstance(metrics[key], float), key
    assert 0.0 <= metrics["val_accuracy"] <= 1.0 and metrics["images_per_second"] > 0
    smoke = CapsNet(conv1_filters=16, primary_maps=4, decoder_units=(32, 64))  # conf/experiment/smoke.yaml
    smoke.build_for_inputs()
    assert {key: metrics[key] for key in ("parameters", "macs_per_image", "routing")} == model_cost(smoke)
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "train.log").is_file()
    assert "epoch 1/1" in (run_dir / "train.log").read_text()
    for kind in ("last", "best"):
        assert any(name.endswith(".index") for name in os.listdir(run_dir / "checkpoints" / kind))
    events = read_tensorboard(run_dir / "tensorboard")
    tags = set(events.Tags()["tensors"])
    assert TRAIN_TAGS | VAL_TAGS <= tags
    assert [event.step for event in events.Tensors("train/loss")] == [2, 4, 6, 8]
    assert [event.step for event in events.Tensors("val/accuracy")] == [8]
    image = events.Tensors("val/reconstructions")[0].tensor_proto
    assert image.string_val[:2] == [b"224", b"56"]  # 8 digits of 28 px wide, 2 rows (original, reconstruction)
    assert "_hparams_/session_start_info" in tags


BAD_INPUTS = [
    (["model.routing_iterations=0"], "model.routing_iterations must be >= 1"),
    (["loss.m_minus=0.95"], "must be smaller than loss.m_plus"),
    (["loss.m_plus=1.5"], "loss.m_plus must be in [0, 1]"),
    (["loss.m_minus=-0.1"], "loss.m_minus must be in [0, 1]"),
    (["loss.recon_weight=-1"], "loss.recon_weight must be >= 0"),
    (["loss.lambda_=-0.5"], "loss.lambda_ must be >= 0"),
    (["epochs=0"], "epochs must be >= 1"),
    (["batch_size=0"], "batch_size must be >= 1"),
    (["trainer.strategy=horovod"], "trainer.strategy must be one of"),
    (["data.path=/no/such/folder"], "data.path /no/such/folder does not exist"),
    (["epochs=abc"], "could not be converted to Integer"),
    (["model.routing_iteration=2"], "did you mean 'model.routing_iterations'"),
    (["experiment=nope"], "there is no experiment 'nope' (conf/experiment/); choose one of affine_robustness,"),
    (["trainer.mixed_precision=fp8"], "trainer.mixed_precision must be one of"),
]


@pytest.mark.parametrize("overrides,message", BAD_INPUTS, ids=[o[0] for o, _ in BAD_INPUTS])
def test_bad_train_input_is_one_line_exit_2_and_writes_nothing(tmp_path, overrides, message):
    run_dir = tmp_path / "run"
    result = run_cli("train", *overrides, f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    line = last_stderr_line(result)
    assert line.startswith("capsrun train: error:") and message in line, result.stderr
    assert not run_dir.exists()


def test_unknown_command_is_exit_2():
    result = run_cli("trian")
    assert result.returncode == 2 and "unknown command 'trian'" in result.stderr
    assert "Traceback" not in result.stderr


def test_batch_size_must_divide_by_replicas(tmp_path):
    result = run_cli("train", "experiment=smoke", "batch_size=31", "trainer.cpu_devices=2",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "batch_size=31 does not divide by the 2 replicas" in last_stderr_line(result)
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    result = run_cli("train", "experiment=smoke", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


def _corrupt_mnist_copy(folder):
    import gzip
    import shutil

    from capsrun.data.sources import BUNDLED_MNIST

    shutil.copytree(BUNDLED_MNIST, folder)
    images = folder / "train-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(images.read_bytes()))
    raw[5000] ^= 0xFF
    images.write_bytes(gzip.compress(bytes(raw)))


def test_corrupt_data_file_is_named(tmp_path):
    _corrupt_mnist_copy(tmp_path / "mnist")
    run_dir = tmp_path / "run"
    result = run_cli("train", "experiment=smoke", f"data.path={tmp_path / 'mnist'}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train-images-idx3-ubyte.gz is corrupt (SHA-256 mismatch)" in last_stderr_line(result)
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "checkpoints").exists()


def test_unwritable_run_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run_cli("train", "experiment=smoke", f"hydra.run.dir={blocker / 'run'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is not a writable folder" in last_stderr_line(result)


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    result = run_cli("train", f"resume={tmp_path}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is not a capsrun run folder" in last_stderr_line(result)


def test_resume_with_a_changed_model_shape_is_refused(trained_run):
    before = (trained_run / ".hydra" / "config.yaml").read_text()
    result = run_cli("train", f"resume={trained_run}", "model.digit_dim=8")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "different model.digit_dim (16 -> 8)" in last_stderr_line(result)
    assert (trained_run / ".hydra" / "config.yaml").read_text() == before


def test_resume_from_a_truncated_checkpoint_is_one_line(trained_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(trained_run, run_dir)
    data_file = next((run_dir / "checkpoints" / "last").glob("*.data-*"))
    data_file.write_bytes(data_file.read_bytes()[:1000])
    result = run_cli("train", f"resume={run_dir}", "epochs=2")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot be restored" in last_stderr_line(result)
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_completed"] == 1
