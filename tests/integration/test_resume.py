"""Runs that survive: kill -9 and resume, SIGTERM, divergence, determinism (real CLI subprocesses)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from capsrun.errors import EXIT_DIVERGED, EXIT_INTERRUPTED
from tests.conftest import REPO, checkpoint_values, last_stderr_line, run_cli

RESUMABLE = ["experiment=smoke", "seed=3", "epochs=2", "data.train_size=2048", "trainer.deterministic=true",
             "trainer.checkpoint_every_steps=8", "trainer.keep_checkpoints=100", "trainer.log_every_steps=4"]


def start_cli(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "-m", "capsrun", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(process, run_dir, timeout=300):
    index = run_dir / "checkpoints" / "last" / "checkpoint"
    deadline = time.monotonic() + timeout
    while not index.exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def scalars(run_dir, tag):
    """[(step, value)] of `tag` ("train/loss": tag loss of the run <run>/train; "train/learning_rate"
    is a tag of the run's own events)."""
    phase, name = tag.split("/", 1)
    folder, tag = (run_dir, tag) if name == "learning_rate" else (run_dir / phase, name)
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    events.Reload()
    return [(event.step, float(tf.make_ndarray(event.tensor_proto))) for event in events.Tensors(tag)]


def test_kill_9_then_resume_ends_like_an_uninterrupted_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert run_cli("train", *RESUMABLE, f"hydra.run.dir={straight}").returncode == 0
    process = start_cli("train", *RESUMABLE, f"hydra.run.dir={killed}")
    wait_for_checkpoint(process, killed)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists() or "completed" not in (killed / "metrics.json").read_text()
    resumed = run_cli("train", f"resume={killed}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in (killed / "train.log").read_text()
    expected, actual = checkpoint_values(straight), checkpoint_values(killed)
    assert expected.keys() == actual.keys() and len(expected) > 20
    for name in expected:
        np.testing.assert_array_equal(expected[name], actual[name], err_msg=name)
    for tag in ("train/loss", "train/learning_rate", "val/accuracy"):
        steps_expected, steps_actual = scalars(straight, tag), scalars(killed, tag)
        assert [s for s, _ in steps_expected] == [s for s, _ in steps_actual], tag
        np.testing.assert_allclose([v for _, v in steps_expected], [v for _, v in steps_actual], rtol=1e-6)
    assert json.loads((killed / "metrics.json").read_text())["status"] == "completed"


def test_sigterm_writes_a_checkpoint_and_exits_with_the_interrupted_status(tmp_path):
    run_dir = tmp_path / "run"
    process = start_cli("train", "experiment=smoke", "epochs=3", "data.train_size=4096",
                        "trainer.checkpoint_every_steps=4", f"hydra.run.dir={run_dir}")
    wait_for_checkpoint(process, run_dir)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_INTERRUPTED
    assert "Traceback" not in stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted"
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints" / "last"))
    assert latest.endswith(f"ckpt-{metrics['global_step']}")
    assert f"capsrun train resume={run_dir}" in (run_dir / "train.log").read_text()


def test_non_finite_loss_stops_with_status_diverged(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("train", "experiment=smoke", "loss.recon_weight=1e38", f"hydra.run.dir={run_dir}")
    assert result.returncode == EXIT_DIVERGED
    assert "Traceback" not in result.stderr
    assert "non-finite at step 1" in last_stderr_line(result)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["global_step"] == 1
    assert "best_val_accuracy" not in metrics
    assert not (run_dir / "checkpoints" / "best").exists() or not os.listdir(run_dir / "checkpoints" / "best")


def test_two_deterministic_runs_give_identical_losses(tmp_path):
    args = ["experiment=smoke", "epochs=2", "trainer.deterministic=true", "trainer.log_every_steps=1"]
    for name in ("a", "b"):
        assert run_cli("train", *args, f"hydra.run.dir={tmp_path / name}").returncode == 0
    losses_a, losses_b = scalars(tmp_path / "a", "train/loss"), scalars(tmp_path / "b", "train/loss")
    assert len(losses_a) == 16 and losses_a == losses_b


@pytest.mark.slow
def test_efficient_capsnet_resumes_to_the_weights_and_batch_norm_statistics_of_a_straight_run(tmp_path):
    """Batch norm's moving statistics are checkpointed and restored with the weights: 1 epoch, then
    `resume` to 2 epochs, ends bit-identical to 2 epochs straight (trainer.deterministic=true)."""
    args = ["experiment=smoke", "model=efficient_capsnet", "trainer.deterministic=true"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_cli("train", *args, "epochs=2", f"hydra.run.dir={straight}").returncode == 0
    assert run_cli("train", *args, "epochs=1", f"hydra.run.dir={resumed}").returncode == 0
    result = run_cli("train", f"resume={resumed}", "epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in (resumed / "train.log").read_text()
    expected, actual = checkpoint_values(straight), checkpoint_values(resumed)
    assert expected.keys() == actual.keys()
    assert any("moving_variance" in name for name in expected), sorted(expected)
    del expected["save_counter/.ATTRIBUTES/VARIABLE_VALUE"]  # the resumed run saved once more (its first end)
    for name in expected:
        np.testing.assert_array_equal(expected[name], actual[name], err_msg=name)
