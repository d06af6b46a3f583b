"""Trained runs on disk, through the real CLI: `capsrun export format=keras` loaded in a fresh
process that imports only Keras and capsrun's models, and damaged run folders (a truncated or
corrupt checkpoint, an unparsable config.yaml or metrics.json, another model's checkpoint) met
by every command that reads a run. Three tiny runs are trained once for the module (~40 s)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, last_stderr_line, run_cli

TRAIN = ["experiment=smoke", "data.train_size=64", "data.val_size=32", "data.test_size=32"]
SMALL_CNN = ["model=baseline_cnn", "model.cnn_channels=[8,8,4]", "model.fc_units=[16,8]"]


def ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"capsnet", "self_attention", "baseline_cnn"}: run folders of one tiny epoch each."""
    root = tmp_path_factory.mktemp("saved_runs")
    ok(run_cli("train", "-m", *TRAIN, "model.routing=dynamic,self_attention", f"hydra.sweep.dir={root / 'capsnets'}"))
    ok(run_cli("train", *TRAIN, *SMALL_CNN, f"hydra.run.dir={root / 'baseline_cnn'}"))
    jobs = {routing: next((root / "capsnets").glob(f"*model.routing={routing}")) for routing in ("dynamic",
                                                                                                "self_attention")}
    return {"capsnet": jobs["dynamic"], "self_attention": jobs["self_attention"], "baseline_cnn": root / "baseline_cnn"}


# -- .keras export -------------------------------------------------------------------------------

LOAD_KERAS = """
import json, sys
import numpy as np, keras
import capsrun.models.saving  # registers capsrun's layers and models with Keras
model = keras.saving.load_model(sys.argv[1])
images = np.load(sys.argv[2])
scores = np.asarray(model(images)["scores"])
loaded = sorted(name for name in sys.modules if name.startswith("capsrun."))
print(json.dumps({"class": type(model).__name__, "scores": scores.tolist(), "modules": loaded}))
"""


@pytest.mark.parametrize("name", ["capsnet", "self_attention", "baseline_cnn"])
def test_keras_export_loads_in_a_fresh_process_with_the_same_scores(runs, tmp_path, name):
    run = runs[name]
    output = tmp_path / "exported" / "model.keras"
    result = ok(run_cli("export", f"run_dir={run}", "format=keras", f"output={output}"))
    assert f"wrote Keras model {output}" in result.stdout
    assert output.is_file() and [path.name for path in output.parent.iterdir()] == ["model.keras"]  # no temp left

    from capsrun.data.splits import load_splits
    from capsrun.models.base import SCORES
    from capsrun.training.restore import load_config, restore_run

    cfg = load_config(run)
    images = load_splits(cfg.data, cfg.seed).test.images[:12].astype(np.float32) / 255.0
    np.save(tmp_path / "images.npy", images)
    restored = restore_run(run, "best")
    expected = restored.model(images, training=False)[SCORES].numpy()

    loaded = subprocess.run([sys.executable, "-c", LOAD_KERAS, str(output), str(tmp_path / "images.npy")],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    answer = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert answer["class"] == type(restored.model).__name__
    np.testing.assert_allclose(answer["scores"], expected, rtol=1e-5, atol=1e-6)
    assert not [module for module in answer["modules"]
                if module.startswith(("capsrun.training", "capsrun.commands", "capsrun.analysis", "capsrun.data"))]


def test_keras_export_default_path_and_overwrite_rules(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["capsnet"], run)
    ok(run_cli("export", f"run_dir={run}", "format=keras"))
    exported = run / "model.keras"
    assert exported.is_file() and not list(run.glob(".model.keras*"))
    again = run_cli("export", f"run_dir={run}", "format=keras")
    assert again.returncode == 2 and "already exists; pass overwrite=true" in last_stderr_line(again)
    before = exported.stat().st_mtime_ns
    ok(run_cli("export", f"run_dir={run}", "format=keras", "overwrite=true"))
    assert exported.stat().st_mtime_ns != before and not list(run.glob(".model.keras*"))
    (run / "notes.keras").write_text("my notes")
    for args, message in [(["output=" + str(run / "notes.keras"), "overwrite=true"], "is not a .keras file"),
                          (["output=" + str(run / "model.h5")], "must end in .keras"),
                          (["format=onnx"], "format must be one of saved_model, keras")]:
        result = run_cli("export", f"run_dir={run}", *(["format=keras"] if "format=onnx" not in args else []), *args)
        assert result.returncode == 2 and message in last_stderr_line(result), result.stderr[-2000:]
    assert (run / "notes.keras").read_text() == "my notes"


# -- damaged run folders -------------------------------------------------------------------------

def _checkpoint_files(run, pattern):
    files = sorted((run / "checkpoints").glob(f"*/{pattern}"))
    assert files, pattern
    return files


def truncated_data(run, runs):
    """Every checkpoint data file cut to its first 100 bytes (a full disk, an interrupted copy)."""
    files = _checkpoint_files(run, "*.data-*")
    for path in files:
        path.write_bytes(path.read_bytes()[:100])
    return "checkpoints/"


def corrupt_index(run, runs):
    """Every checkpoint's `.index` file overwritten with garbage."""
    for path in _checkpoint_files(run, "*.index"):
        path.write_bytes(b"\x00garbage" * 20)
    return "checkpoints/"


def corrupt_state(run, runs):
    """The `checkpoint` state files (which checkpoint is the latest) unparsable."""
    for path in _checkpoint_files(run, "checkpoint"):
        path.write_bytes(b"\xff\xfe not a text proto {{{")
    return "checkpoints/"


def bad_config(run, runs):
    (run / ".hydra" / "config.yaml").write_text("model: {name: capsnet\n  conv1_filters: [16\n")
    return ".hydra/config.yaml"


def bad_metrics(run, runs):
    (run / "metrics.json").write_text('{"status": "completed", "history": [')
    return "metrics.json"


def other_model(run, runs):
    """The baseline CNN's checkpoints in place of the CapsNet's."""
    shutil.rmtree(run / "checkpoints")
    shutil.copytree(runs["baseline_cnn"] / "checkpoints", run / "checkpoints")
    return "checkpoints/"


DAMAGES = {"truncated_data": truncated_data, "corrupt_index": corrupt_index, "corrupt_state": corrupt_state,
           "bad_config": bad_config, "bad_metrics": bad_metrics, "other_model": other_model}
MESSAGES = {"truncated_data": "is damaged", "corrupt_index": "is damaged", "corrupt_state": "is damaged",
            "bad_config": "", "bad_metrics": "", "other_model": "comes from a run with a different model"}


def command_args(command, run, tmp_path):
    if command == "predict":
        from PIL import Image

        Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "digit.png")
        return [f"run_dir={run}", f"images=[{tmp_path / 'digit.png'}]"]
    if command == "report":
        return [f"sweep_dir={run.parent}"]
    if command == "train":
        return [f"resume={run}", "epochs=2"]
    return [f"run_dir={run}"]


READERS = {  # the damages each command meets: they read the checkpoints and config.yaml; report
    # and a resumed training also read metrics.json (the others never open it)
    "eval": ("truncated_data", "corrupt_index", "corrupt_state", "bad_config", "other_model"),
    "visualize": ("truncated_data", "corrupt_index", "corrupt_state", "bad_config", "other_model"),
    "predict": ("truncated_data", "corrupt_index", "corrupt_state", "bad_config", "other_model"),
    "export": ("truncated_data", "corrupt_index", "corrupt_state", "bad_config", "other_model"),
    "report": ("truncated_data", "corrupt_index", "corrupt_state", "bad_config", "bad_metrics", "other_model"),
    "train": ("truncated_data", "corrupt_index", "corrupt_state", "bad_config", "bad_metrics", "other_model"),
}
FAST = {("eval", "truncated_data"), ("visualize", "corrupt_index"), ("predict", "other_model"),
        ("export", "bad_config"), ("report", "bad_metrics"), ("train", "corrupt_state"), ("train", "other_model")}
"""Every command and every damage once in the fast suite (each case starts TensorFlow, 10-20 s on
the shared 2 cores); the rest of the matrix is marked slow."""
CASES = [pytest.param(command, damage, id=f"{command}-{damage}",
                      marks=() if (command, damage) in FAST else pytest.mark.slow)
         for command, damages in READERS.items() for damage in damages]


def snapshot(folder):
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(Path(folder).rglob("*")) if path.is_file()}


@pytest.mark.parametrize("command,damage", CASES)
def test_a_damaged_run_is_one_line_naming_the_file_exit_2_nothing_written(runs, tmp_path, command, damage):
    run = tmp_path / "sweep" / "job"  # a sweep of one job, for report
    shutil.copytree(runs["capsnet"], run)
    named = DAMAGES[damage](run, runs)
    before = snapshot(tmp_path / "sweep")
    result = run_cli(command, *command_args(command, run, tmp_path))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = last_stderr_line(result)
    assert line.startswith(f"capsrun {command}: error:"), result.stderr[-3000:]
    message = MESSAGES[damage]
    # a checkpoint of another model is found only when the job builds the model, after Hydra has
    # rewritten .hydra/ and appended to train.log: `capsrun train` puts them back
    after = snapshot(tmp_path / "sweep")
    assert str(run / named) in line and message in line, line
    assert after == before  # nothing written, nothing touched
