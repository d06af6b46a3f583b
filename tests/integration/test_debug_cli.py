"""The debugging presets of conf/debug/ through the real CLI: fast (a few steps of everything),
overfit (one batch, ~100% training accuracy) and profile (a TensorBoard profiler trace)."""
import json

import pytest
import tensorflow as tf

from tests.conftest import run_cli


def trained(*overrides, run_dir):
    result = run_cli("train", *overrides, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


def test_fast_runs_a_few_steps_of_everything(tmp_path):
    metrics = trained("experiment=smoke", "debug=fast", run_dir=tmp_path / "run")
    assert metrics["status"] == "completed" and metrics["global_step"] == 4  # 64 images, batch 16
    assert metrics["best_val_accuracy"] is not None  # validation ran
    last = tmp_path / "run" / "checkpoints" / "last"
    assert {path.name.split(".")[0] for path in last.glob("ckpt-*.index")} == {"ckpt-2", "ckpt-4"}  # step 2, epoch end
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints" / "best")).endswith("ckpt-4")
    for events in (tmp_path / "run", tmp_path / "run" / "train", tmp_path / "run" / "val"):  # the run's, per phase
        assert list(events.glob("events.out.tfevents.*")), events


def overfit_accuracy(metrics):
    return [epoch["train_accuracy"] for epoch in metrics["history"]]


def test_overfit_learns_its_one_batch(tmp_path):
    # The smoke model (16 conv filters) learns more slowly than the full CapsNet, which the preset
    # is tuned for (slow test below); at lr 0.003 it has all 16 images right after 18 steps.
    metrics = trained("experiment=smoke", "debug=overfit", "optimizer.lr=0.003", run_dir=tmp_path / "run")
    accuracy = overfit_accuracy(metrics)
    assert len(accuracy) == 30 and metrics["global_step"] == 30  # one step per epoch: the same 16 images
    assert accuracy[0] < 0.5 and accuracy[-1] == 1.0 and min(accuracy[-5:]) >= 0.9375, accuracy


@pytest.mark.slow
def test_overfit_preset_reaches_100_percent_with_the_full_capsnet(tmp_path):
    """Measured on 2 CPU cores: 100% training accuracy from step 10 on, about 80 s for the 30 steps."""
    accuracy = overfit_accuracy(trained("debug=overfit", run_dir=tmp_path / "run"))
    assert accuracy[-1] == 1.0 and min(accuracy[-10:]) == 1.0, accuracy


def test_profile_writes_a_trace_tensorboard_opens(tmp_path):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    trained("experiment=smoke", "debug=profile", run_dir=tmp_path / "run")
    traces = list((tmp_path / "run" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1  # <logdir>/plugins/profile/<timestamp>/<host>.xplane.pb: TensorBoard's layout
    assert not (tmp_path / "run" / "tensorboard").exists()  # else later events would take the old layout
    space = xplane_pb2.XSpace.FromString(traces[0].read_bytes())
    steps = set()
    for plane in space.planes:
        names = {key: value.name for key, value in plane.event_metadata.items()}
        stats = {key: value.name for key, value in plane.stat_metadata.items()}
        steps |= {stat.int64_value or stat.uint64_value for line in plane.lines for event in line.events
                  if names.get(event.metadata_id) == "train"
                  for stat in event.stats if stats.get(stat.metadata_id) == "step_num"}
    assert steps == {3, 4, 5}  # trainer.profile_steps: [3, 5] of the preset
