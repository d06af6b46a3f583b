"""Multi-worker training on TensorFlow's runtime: `capsrun launch` with 2 local workers."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO, checkpoint_values, last_stderr_line, run_cli

ARGS = ["experiment=smoke", "data.train_size=128", "seed=5"]


def run_files(run_dir):
    return sorted(str(path.relative_to(run_dir)).split(".tfevents")[0] for path in run_dir.rglob("*"))


def test_two_workers_train_like_one_worker_with_two_devices(tmp_path):
    cluster_dir, mirrored_dir = tmp_path / "cluster", tmp_path / "mirrored"
    launched = run_cli("launch", "workers=2", "--", "train", *ARGS, f"hydra.run.dir={cluster_dir}")
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "[worker 1]" in launched.stdout + launched.stderr and "all 2 workers finished" in launched.stdout
    single = run_cli("train", *ARGS, "trainer.cpu_devices=2", f"hydra.run.dir={mirrored_dir}")
    assert single.returncode == 0, single.stderr[-3000:]
    assert "with 2 replica(s)" in (mirrored_dir / "train.log").read_text()
    assert "with 2 replica(s)" in (cluster_dir / "train.log").read_text()
    expected, actual = checkpoint_values(mirrored_dir), checkpoint_values(cluster_dir)
    assert expected.keys() == actual.keys() and len(expected) > 30
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert run_files(cluster_dir) == run_files(mirrored_dir)


def launch_until_training(*overrides):
    """Starts `capsrun launch workers=2 -- train experiment=smoke epochs=50 OVERRIDES` and reads its
    output until the first progress line of epoch 1; returns (the launcher process, {worker: pid})."""
    process = subprocess.Popen(
        [sys.executable, "-m", "capsrun", "launch", "workers=2", "--", "train", "experiment=smoke", "epochs=50",
         *overrides],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    pids = {}
    for line in process.stdout:
        match = re.match(r"capsrun launch: started worker (\d) \(pid (\d+)\)", line)
        if match:
            pids[int(match.group(1))] = int(match.group(2))
        if "epoch 1/50" in line:
            break
    return process, pids


def test_a_dead_worker_stops_the_cluster(tmp_path):
    process, pids = launch_until_training(f"hydra.run.dir={tmp_path / 'run'}")
    os.kill(pids[1], signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert f"worker 1 (pid {pids[1]}) was killed by SIGKILL; stopped the other workers" in stderr
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)


def test_sigterm_to_one_worker_stops_every_worker_after_the_same_loop(tmp_path):
    """trainer.steps_per_loop=4: the stop flag of worker 1 rides on the next loop of both workers,
    so the cluster stops at a loop boundary (a multiple of 4 steps), the chief writes the
    checkpoint and both exit with the interrupted status."""
    from capsrun.errors import EXIT_INTERRUPTED

    run_dir = tmp_path / "run"
    process, pids = launch_until_training("trainer.steps_per_loop=4", "trainer.log_every_steps=4",
                                          f"hydra.run.dir={run_dir}")
    os.kill(pids[1], signal.SIGTERM)  # worker 1 only: the chief learns of it through the loop's sums
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == EXIT_INTERRUPTED, stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["global_step"] % 4 == 0 and metrics["global_step"] > 0
    log = (run_dir / "train.log").read_text()
    assert "a stop request from another worker received: checkpoint" in log
    assert f"written at step {metrics['global_step']}" in log
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints" / "last")).endswith(f"ckpt-{metrics['global_step']}")


@pytest.mark.parametrize("args,message", [
    (["workers=2", "train"], "the `--` is missing"),
    (["workers=0", "--", "train"], "workers must be a whole number >= 1"),
    (["gpus=2", "--", "train"], "unknown key 'gpus' for capsrun launch"),
    (["workers=2", "--", "eval"], "runs `train` only"),
    (["workers=2", "--", "train", "epochs=0"], "epochs must be >= 1"),
])
def test_bad_launch_input(args, message):
    result = run_cli("launch", *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in last_stderr_line(result)
