"""Test set-up: two logical CPU devices (the stand-in for two GPUs), small configs, helpers."""
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

REPO = Path(__file__).resolve().parent.parent


def compose_config(*overrides, experiment="smoke"):
    """The composed `capsrun train` config of `experiment` (None: the defaults) with overrides."""
    from capsrun.config.compose import compose

    chosen = [f"experiment={experiment}"] if experiment else []
    return compose("config", [*chosen, *overrides])


def run_cli(*args, cwd=None, timeout=600, env=None):
    """Runs `python -m capsrun ARGS` in a subprocess; returns the CompletedProcess."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "capsrun", *map(str, args)],
        cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout, env=full_env,
    )


def checkpoint_values(run_dir):
    """Every saved variable (weights, Adam moments, counters) of the run's latest checkpoint, but
    the training clock (wall times, which differ between any two runs)."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(run_dir / "checkpoints" / "last")))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if not name.startswith(("_CHECKPOINTABLE_OBJECT_GRAPH", "clock/"))}


def last_stderr_line(result):
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.fixture
def smoke_cfg():
    return compose_config()
