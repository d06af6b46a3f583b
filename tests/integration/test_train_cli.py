"""The real `capsrun` command line in subprocesses: a short training run and every bad input."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from capsrun.logs import BANNER
from capsrun.models.capsnet import CapsNet
from capsrun.models.cost import model_cost
from tests.conftest import REPO, last_stderr_line, run_cli

PHASE_TAGS = {"loss", "margin_loss", "reconstruction_loss", "accuracy"}
"""The same tags in the runs <run>/train and <run>/val: one chart per quantity overlays both."""
RUN_TAGS = {"train/learning_rate", "train/images_per_second", "result/best_val_accuracy", "result/val_accuracy",
            "result/train_accuracy", "result/images_per_second", "config", "result",
            "_hparams_/session_start_info", "_hparams_/experiment"}


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
    session, train, val = (read_tensorboard(run_dir / name) for name in ("", "train", "val"))
    train_tags, val_tags = set(train.Tags()["tensors"]), set(val.Tags()["tensors"])
    assert PHASE_TAGS <= train_tags and PHASE_TAGS | {"reconstructions"} <= val_tags
    assert RUN_TAGS <= set(session.Tags()["tensors"])
    assert not PHASE_TAGS & set(session.Tags()["tensors"])  # no third curve beside train and val
    assert [event.step for event in train.Tensors("loss")] == [2, 4, 6, 8]
    assert [event.step for event in session.Tensors("train/learning_rate")] == [2, 4, 6, 8]
    assert [event.step for event in val.Tensors("accuracy")] == [8]
    image = val.Tensors("reconstructions")[0].tensor_proto
    assert image.string_val[:2] == [b"224", b"56"]  # 8 digits of 28 px wide, 2 rows (original, reconstruction)
    folders = {path.parent.relative_to(run_dir).as_posix() for path in run_dir.rglob("events.out.tfevents.*")}
    assert folders == {".", "train", "val"}  # no tensorboard/ segment in the TensorBoard run names


def test_train_to_a_target_accuracy_records_the_time_and_stops_there(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("train", "experiment=smoke", "epochs=3", "trainer.val_every_steps=4",
                     "trainer.target_val_accuracy=0.01", "trainer.stop_at_val_accuracy=0.01",
                     f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["stopped_at_step"] == 4 == metrics["global_step"]
    assert metrics["steps_to_target"] == 4 and metrics["epochs_to_target"] == 0.5
    assert metrics["time_to_target_seconds"] == metrics["validations"][0]["seconds"] > 0
    assert metrics["compile_seconds"] > metrics["training_seconds"] > 0  # tracing dominates 4 tiny steps
    session = read_tensorboard(run_dir)
    assert [event.step for event in session.Tensors("result/time_to_target_seconds")] == [4]
    assert "reached trainer.target_val_accuracy=0.01" in (run_dir / "train.log").read_text()


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
    (["trainer.target_val_accuracy=98.5"], "must be null or a fraction in (0, 1], e.g. 0.985 for 98.5%"),
    (["model=em_capsnet", "model.em_routing_chunk=-1"], "model.em_routing_chunk must be >= 0"),
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
    assert "is damaged" in last_stderr_line(result)
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_completed"] == 1


def user_config_folder(root, config_yaml=False):
    """A user's config folder: experiment/mine.yaml on top of smoke, a bad experiment, and
    (config_yaml) its own config.yaml with seed 5 instead of capsrun's 0."""
    (root / "experiment").mkdir(parents=True)
    (root / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - /experiment/smoke\nseed: 7\ndata:\n  train_size: 64\n  val_size: 32\n")
    (root / "experiment" / "bad.yaml").write_text("# @package _global_\ntrainer:\n  log_evry_steps: 2\n")
    if config_yaml:
        text = (REPO / "conf" / "config.yaml").read_text()
        (root / "config.yaml").write_text(text.replace("\nseed: 0 ", "\nseed: 5 "))
    return root


def composed(result):
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_a_user_config_folder_with_an_experiment_of_its_own(tmp_path):
    folder = user_config_folder(tmp_path / "myconf")
    for args in (["-cd", folder], [f"--config-dir={folder}"], [f"hydra.searchpath=[file://{folder}]"]):
        cfg = composed(run_cli("train", *args, "experiment=mine", "--cfg", "job"))
        assert (cfg["seed"], cfg["epochs"], cfg["data"]["train_size"], cfg["batch_size"]) == (7, 1, 64, 32), args
    own = user_config_folder(tmp_path / "withconfig", config_yaml=True)
    assert composed(run_cli("train", "-cd", own, "--cfg", "job"))["seed"] == 5  # its config.yaml is the primary one


@pytest.mark.parametrize("args,message", [
    (["-cd", "{folder}", "experiment=bad"], "Key 'log_evry_steps' not in 'TrainerConfig'"),
    (["-m", "hydra.searchpath=[file://{folder}]", "experiment=mine,bad"], "Key 'log_evry_steps' not in"),
    (["-cd", "{folder}", "experiment=mien"],
     "there is no experiment 'mien' (conf/experiment/, {folder}/experiment/); "
     "choose one of affine_robustness, bad, cifar10, demo, efficient_capsnet, fashion_mnist, mine,"),
    (["-cd", "{folder}/nope", "experiment=mine"], "config folder {folder}/nope (-cd/--config-dir) does not exist"),
    (["hydra.searchpath=[file://{folder}/nope]"], "config folder {folder}/nope (hydra.searchpath) does not exist"),
    (["hydra.searchpath=[pkg://no_such_package.conf]"], "config package no_such_package.conf (hydra.searchpath)"),
])
def test_a_bad_user_config_folder_is_one_line_exit_2_before_any_run_folder(tmp_path, args, message):
    folder = user_config_folder(tmp_path / "myconf")
    run_dir, sweep_dir = tmp_path / "run", tmp_path / "sweep"
    result = run_cli("train", *[arg.format(folder=folder) for arg in args], f"hydra.run.dir={run_dir}",
                     f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = last_stderr_line(result)
    assert line.startswith("capsrun train: error:") and message.format(folder=folder) in line, result.stderr
    assert not run_dir.exists() and not sweep_dir.exists()


def test_train_help_is_capsruns_and_hydras_is_hydra_help():
    for flag in ("--help", "-h"):
        result = run_cli("train", flag)
        assert result.returncode == 0 and result.stdout.startswith("usage: capsrun train"), result.stderr
        for text in ("epochs: 10", "experiment=", "smoke", "-m, --multirun", "resume=RUN_DIR", "-cd DIR",
                     "--cfg job", "--hydra-help", "--verbose"):
            assert text in result.stdout, text
    hydra_help = run_cli("train", "--hydra-help")
    assert hydra_help.returncode == 0 and "== Flags ==" in hydra_help.stdout, hydra_help.stderr


def tensorflow_banner(stderr):
    return [line for line in stderr.splitlines() if BANNER.match(line) or "oneDNN" in line or "cuda" in line.lower()]


def test_no_tensorflow_start_up_lines_unless_verbose(tmp_path):
    """A run from a user's config folder, then predict with it, without TF_CPP_MIN_LOG_LEVEL in
    the environment: no TensorFlow line on stderr; --verbose lets them through (absl's 'before
    InitializeLog' line comes with every TensorFlow 2.21 import)."""
    folder = user_config_folder(tmp_path / "myconf")
    run_dir = tmp_path / "run"
    env = {key: value for key, value in os.environ.items() if key not in ("TF_CPP_MIN_LOG_LEVEL", "CAPSRUN_VERBOSE")}

    def capsrun(*args):
        return subprocess.run([sys.executable, "-m", "capsrun", *map(str, args)], cwd=REPO, env=env, timeout=600,
                              capture_output=True, text=True)

    trained = capsrun("train", "-cd", folder, "experiment=mine", f"hydra.run.dir={run_dir}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert tensorflow_banner(trained.stderr) == [], trained.stderr
    assert yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["seed"] == 7
    resumed = composed(run_cli("train", f"resume={run_dir}", "epochs=2", "--cfg", "job"))  # no -cd: the run's own
    assert (resumed["seed"], resumed["epochs"], resumed["data"]["train_size"]) == (7, 2, 64)
    log = (run_dir / "train.log").read_text()
    assert re.search(r"epoch 1/1: loss [\d.]+, train accuracy \d+\.\d\d%, val accuracy \d+\.\d\d%", log), log
    assert re.search(r"done: best validation accuracy \d+\.\d\d%", log), log
    np.save(tmp_path / "digits.npy", np.zeros((2, 28, 28), np.uint8))
    quiet = capsrun("predict", f"run_dir={run_dir}", f"images={tmp_path / 'digits.npy'}")
    assert quiet.returncode == 0 and tensorflow_banner(quiet.stderr) == [], quiet.stderr
    loud = capsrun("--verbose", "predict", f"run_dir={run_dir}", f"images={tmp_path / 'digits.npy'}")
    assert loud.returncode == 0, loud.stderr
    assert "All log messages before absl::InitializeLog() is called are written to STDERR" in loud.stderr
