"""`capsrun eval`, `visualize`, `predict` and `export` through the real command line, on two small
runs trained once for this module (a 2-job multirun, ~15 s), plus their bad inputs."""
import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import last_stderr_line, run_cli

TRAIN = ["experiment=smoke", "epochs=3", "data.train_size=1024", "optimizer.lr=0.003"]
TEST_DIGITS = 128  # data.test_size of the smoke experiment
EVAL_FILES = ("eval.json", "eval_predictions.csv", "confusion_matrix.png", "misclassified.png")


def png_size(path):
    with Image.open(path) as image:
        return image.size


def tensorboard_tags(folder):
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    events.Reload()
    return events, set(events.Tags()["tensors"])


def read_predictions(run_dir):
    with open(run_dir / "eval_predictions.csv") as stream:
        rows = list(csv.DictReader(stream))
    lengths = np.array([[float(row[f"length_{k}"]) for k in range(10)] for row in rows])
    return rows, lengths


def ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A multirun folder with two trained runs (seeds 0 and 1); job folders are named by their
    overrides, e.g. `data.train_size=1024,epochs=3,...,seed=0` (with `=` and `,` in the name)."""
    sweep = tmp_path_factory.mktemp("inspection") / "multirun"
    ok(run_cli("train", "-m", *TRAIN, "seed=0,1", f"hydra.sweep.dir={sweep}"))
    jobs = sorted(path for path in sweep.iterdir() if (path / ".hydra" / "config.yaml").is_file())
    assert len(jobs) == 2 and jobs[0].name.endswith("seed=0") and "," in jobs[0].name
    return sweep, jobs


@pytest.fixture(scope="module")
def evaluated(runs):
    sweep, _ = runs
    return ok(run_cli("eval", f"run_dir={sweep}"))


@pytest.fixture(scope="module")
def test_images(runs):
    from capsrun.data.splits import load_splits
    from capsrun.training.restore import load_config

    cfg = load_config(runs[1][0])
    return load_splits(cfg.data, cfg.seed).test


def test_eval_files_are_consistent(runs, evaluated):
    for run in runs[1]:
        assert all((run / name).is_file() for name in EVAL_FILES)
        assert not list(run.glob(".*.tmp"))
        report = json.loads((run / "eval.json").read_text())
        confusion = np.array(report["confusion_matrix"])
        assert confusion.shape == (10, 10) and confusion.sum() == report["num_examples"] == TEST_DIGITS
        assert report["test_accuracy"] == np.trace(confusion) / confusion.sum()
        assert report["test_error_percent"] == pytest.approx(100 * (1 - report["test_accuracy"]))
        assert report["test_accuracy"] > 0.5  # the runs learned something: the checks below mean something
        for k in range(10):
            assert report["per_class_accuracy"][k] == pytest.approx(confusion[k, k] / confusion[k].sum())
        assert report["checkpoint"] == str(run / "checkpoints" / "best" / f"ckpt-{report['step']}")
        assert 0 < report["reconstruction_error"] < 1
        rows, lengths = read_predictions(run)
        assert len(rows) == TEST_DIGITS
        predicted = np.array([int(row["predicted"]) for row in rows])
        labels = np.array([int(row["label"]) for row in rows])
        assert np.array_equal(predicted, lengths.argmax(axis=1))
        recomputed = np.zeros((10, 10), dtype=int)
        np.add.at(recomputed, (labels, predicted), 1)
        assert np.array_equal(recomputed, confusion)
        assert png_size(run / "confusion_matrix.png") == (700, 600)
        shown = min(report["num_misclassified"], 50)
        assert png_size(run / "misclassified.png") == (1100, round(80 + 130 * max(1, math.ceil(shown / 10))))
        events, tags = tensorboard_tags(run)
        assert {"test/accuracy", "test/error_percent", "test/reconstruction_error", "test/confusion_matrix",
                "test/misclassified", "test/per_class_accuracy/0"} <= tags
        logged = events.Tensors("test/accuracy")[-1]
        assert logged.step == report["step"]
        assert float(tf.make_ndarray(logged.tensor_proto)) == pytest.approx(report["test_accuracy"])
    assert f"{report['test_accuracy']:.2%}" in evaluated.stdout and "confusion matrix" in evaluated.stdout


def test_ensemble_averages_capsule_lengths(runs, evaluated):
    sweep, jobs = runs
    ensemble = json.loads((sweep / "ensemble_eval.json").read_text())
    assert ensemble["runs"] == [str(job) for job in jobs]
    members = [json.loads((job / "eval.json").read_text())["test_accuracy"] for job in jobs]
    assert ensemble["member_accuracies"] == members
    (rows, first), (_, second) = read_predictions(jobs[0]), read_predictions(jobs[1])
    labels = np.array([int(row["label"]) for row in rows])
    mean = (first + second) / 2
    assert ensemble["ensemble_accuracy"] == pytest.approx(np.mean(mean.argmax(axis=1) == labels), abs=1.5 / len(labels))
    assert np.trace(np.array(ensemble["confusion_matrix"])) == round(ensemble["ensemble_accuracy"] * len(labels))
    assert f"ensemble of 2 runs (mean capsule lengths): test accuracy {ensemble['ensemble_accuracy']:.2%}" \
        in evaluated.stdout


def test_eval_on_two_replicas_matches_one(runs, evaluated, tmp_path):
    """The same numbers under MirroredStrategy over 2 logical CPUs, with an uneven last batch."""
    copy = tmp_path / "copy"
    shutil.copytree(runs[1][0], copy)
    ok(run_cli("eval", f"run_dir={copy}", "trainer.cpu_devices=2", "batch_size=30", "tensorboard=false"))
    one, two = (json.loads((folder / "eval.json").read_text()) for folder in (runs[1][0], copy))
    assert two["replicas"] == 2 and one["replicas"] == 1
    assert two["confusion_matrix"] == one["confusion_matrix"]
    assert two["reconstruction_error"] == pytest.approx(one["reconstruction_error"], rel=1e-4)
    (_, lengths_one), (_, lengths_two) = read_predictions(runs[1][0]), read_predictions(copy)
    np.testing.assert_allclose(lengths_two, lengths_one, atol=2e-6)


def test_visualize_writes_figures_and_tensorboard(runs, evaluated):
    run = runs[1][0]
    result = ok(run_cli("visualize", f"run_dir={run}"))
    # 20 reconstructions = 2 groups of 10; 10 digits (one per class) = 2 rows of 5 panels of 16 x 11 images
    expected = {"reconstructions.png": (1100, 540), "perturbations.png": (1700, round(70 + 2 * (100 + 270 * 16 / 11))),
                "capsule_lengths.png": (1500, 570)}
    for name, size in expected.items():
        assert png_size(run / name) == size, name
        assert f"{run / name} ({size[0]}x{size[1]})" in result.stdout
    _, tags = tensorboard_tags(run)  # the run's own TensorBoard run, beside its HParams record
    assert {"visualize/reconstructions", "visualize/perturbations", "visualize/capsule_lengths"} <= tags
    assert {"test/accuracy", "test/confusion_matrix", "train/learning_rate", "_hparams_/session_start_info"} <= tags
    assert {"loss", "accuracy"} <= tensorboard_tags(run / "val")[1]


def test_visualize_chosen_digits_and_range(runs, tmp_path):
    ok(run_cli("visualize", f"run_dir={runs[1][0]}", "indices=[5,17]", "perturbation.range=0.1",
               "perturbation.step=0.05", "num_reconstructions=3", f"output_dir={tmp_path}", "dpi=50"))
    assert png_size(tmp_path / "perturbations.png") == (340, round(35 + 50 + 135 * 16 / 5))  # 5 shifts
    assert png_size(tmp_path / "capsule_lengths.png") == (300, round(45 + 120))
    assert png_size(tmp_path / "reconstructions.png") == (550, 155)


def test_predict_matches_eval_and_export_serves_without_capsrun(runs, evaluated, test_images, tmp_path):
    run = runs[1][0]
    rows, lengths = read_predictions(run)
    for index in range(6):
        Image.fromarray(test_images.images[index, ..., 0]).save(tmp_path / f"digit{index}.png")
    np.save(tmp_path / "batch.npy", test_images.images[6:16])
    images = ",".join(str(tmp_path / f"digit{index}.png") for index in range(6))
    result = ok(run_cli("predict", f"run_dir={run}", f"images=[{images},{tmp_path / 'batch.npy'}]", "output=json"))
    predictions = json.loads(result.stdout)["predictions"]
    assert len(predictions) == 16 and predictions[6]["file"] == f"{tmp_path / 'batch.npy'}[0]"
    for index, prediction in enumerate(predictions):
        assert prediction["predicted"] == int(rows[index]["predicted"]), index
        assert prediction["runner_up"] == int(rows[index]["runner_up"]), index
        np.testing.assert_allclose(prediction["lengths"], lengths[index], atol=2e-5)

    saved_model = tmp_path / "exported"
    ok(run_cli("export", f"run_dir={run}", f"output={saved_model}"))
    assert (saved_model / "saved_model.pb").is_file() and not list(tmp_path.glob(".exported*"))
    script = (
        "import sys, json; sys.modules['capsrun'] = None\n"  # any import of capsrun would fail
        "import numpy as np, tensorflow as tf\n"
        f"serve = tf.saved_model.load({str(saved_model)!r}).signatures['serving_default']\n"
        f"images = np.load({str(tmp_path / 'batch.npy')!r}).astype(np.float32) / 255.0\n"
        "out = serve(images=tf.constant(images))\n"
        "print(json.dumps({k: v.numpy().tolist() for k, v in out.items()}))\n"
    )
    served = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    assert served.returncode == 0, served.stderr[-3000:]
    outputs = json.loads(served.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(outputs["lengths"], [p["lengths"] for p in predictions[6:]], atol=2e-5)
    assert outputs["predicted_class"] == [p["predicted"] for p in predictions[6:]]
    again = run_cli("export", f"run_dir={run}", f"output={saved_model}")
    assert again.returncode == 2 and "already exists; pass overwrite=true" in last_stderr_line(again)


def test_predict_centres_scans_and_prints_a_table(runs, evaluated, test_images, tmp_path):
    """A digit drawn dark on light, 3x larger, off-centre, in colour: inverted and centred like MNIST."""
    digit = test_images.images[0, ..., 0]
    big = np.asarray(Image.fromarray(digit).resize((84, 84), Image.Resampling.BICUBIC), dtype=np.float32)
    paper = np.zeros((200, 150), dtype=np.float32)
    paper[30:114, 50:134] = big
    ink = 255.0 - paper
    Image.fromarray(np.stack([ink * 0.9, ink * 0.8, ink], axis=-1).astype(np.uint8)).save(tmp_path / "scan.jpg",
                                                                                            quality=95)
    result = ok(run_cli("predict", f"run_dir={runs[1][0]}", f"images={tmp_path / 'scan.jpg'}"))
    header, row = result.stdout.strip().splitlines()[-2:]
    assert header.split()[:3] == ["file", "predicted", "confidence"]
    assert row.split()[0] == str(tmp_path / "scan.jpg")
    rows, _ = read_predictions(runs[1][0])
    assert int(row.split()[1]) == int(rows[0]["predicted"]) == test_images.labels[0]


def _not_a_run(tmp_path, run):
    (tmp_path / "empty").mkdir()
    return [f"run_dir={tmp_path / 'empty'}"]


def _no_checkpoint(tmp_path, run):
    shutil.copytree(run / ".hydra", tmp_path / "fresh" / ".hydra")
    return [f"run_dir={tmp_path / 'fresh'}"]


def _changed_config(name, old, new):
    """A copy of the run whose config differs from the one its checkpoints were trained with."""
    def make(tmp_path, run):
        folder = tmp_path / name
        shutil.copytree(run / ".hydra", folder / ".hydra")
        (folder / "checkpoints").symlink_to(run / "checkpoints")
        config = folder / ".hydra" / "config.yaml"
        config.write_text(config.read_text().replace(old, new))
        return [f"run_dir={folder}"]
    return make


_incompatible = _changed_config("changed", "conv1_filters: 16", "conv1_filters: 8")
_extra_layer = _changed_config("deeper", "  - 64\n", "  - 64\n  - 64\n")


def _file(name, content):
    def make(tmp_path, run):
        path = tmp_path / name
        if isinstance(content, np.ndarray) and name.endswith(".npy"):
            np.save(path, content)
        elif isinstance(content, np.ndarray):
            Image.fromarray(content).save(path)
        else:
            path.write_bytes(content)
        return [f"run_dir={run}", f"images=[{path}]"]
    return make


SLOW = pytest.mark.slow  # each starts TensorFlow and restores the run (5-9 s); the fast set keeps one of a kind
BAD_INPUTS = [
    ("eval", _not_a_run, "is not a capsrun run folder"),
    ("eval", lambda tmp, run: [f"run_dir={tmp / 'nowhere'}"], "does not exist"),
    ("eval", _no_checkpoint, "has no checkpoint yet; train it first"),
    ("eval", _incompatible, "cannot be restored into this model/config"),
    pytest.param("eval", _extra_layer, "it comes from a run with a different model", marks=SLOW),
    pytest.param("eval", lambda tmp, run: [f"run_dir={run}", f"checkpoint={tmp / 'ckpt-1'}"], "does not exist",
                 marks=SLOW),
    ("eval", lambda tmp, run: ["checkpoint=last"], "run_dir is required"),
    ("eval", lambda tmp, run: [f"run_dir={run}", "batch_sise=8"], "did you mean 'batch_size'"),
    ("eval", lambda tmp, run: [f"run_dir={run}", "data.test_size=-3"], "data.test_size must be null"),
    ("visualize", lambda tmp, run: [f"run_dir={run}", "indices=[3,5000]"], "index 5000 is out of range"),
    ("visualize", lambda tmp, run: [f"run_dir={run}", "perturbation.step=0.07"], "must divide"),
    ("predict", _file("notes.png", b"this is text, not a PNG"), "as an image"),
    ("predict", lambda tmp, run: [f"run_dir={run}", f"images=[{tmp / 'gone.png'}]"], "does not exist"),
    pytest.param("predict", _file("blank.png", np.full((40, 40), 255, dtype=np.uint8)), "shows no digit",
                 marks=SLOW),
    pytest.param("predict", _file("wrong.npy", np.zeros((3, 32, 32), dtype=np.uint8)), "expected [N, 28, 28]",
                 marks=SLOW),
    ("predict", lambda tmp, run: [f"run_dir={run}", "images=[x.png]", "output=xml"], "output must be one of"),
    ("predict", lambda tmp, run: [f"run_dir={run}"], "images is required"),
    ("export", lambda tmp, run: [f"run_dir={run}", "--json"], "unknown option --json"),
]


def _case_id(case):
    command, _, message = case.values if hasattr(case, "values") else case
    return f"{command}-{message[:24]}"


@pytest.mark.parametrize("command,make_args,message", BAD_INPUTS, ids=[_case_id(case) for case in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2(runs, tmp_path, command, make_args, message):
    run = runs[1][0]
    before = {path.name: path.stat().st_mtime_ns for path in run.iterdir()}
    args = make_args(tmp_path, run)
    result = run_cli(command, *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    line = last_stderr_line(result)
    assert line.startswith(f"capsrun {command}: error:") and message in line, result.stderr[-2000:]
    assert result.stdout == ""
    assert not list(Path(tmp_path).rglob("eval.json")) and not list(Path(tmp_path).rglob("*.tmp"))
    assert {path.name: path.stat().st_mtime_ns for path in run.iterdir()} == before  # nothing (re)written
