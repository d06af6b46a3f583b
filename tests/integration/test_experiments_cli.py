"""`capsrun eval` and `visualize` on the paper's further experiments, through the real command line:
the affine test set (section 5.2), MultiMNIST (section 6, Figure 5) and the baseline CNN (with
`capsrun report`). Each run is trained once per module on a few hundred images (~15 s each)."""
import csv
import json
import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import last_stderr_line, run_cli

SMOKE = ["experiment=smoke", "data.train_size=1024", "optimizer.lr=0.003"]
MULTIMNIST = ["experiment=smoke", "data=multimnist", "data.train_size=2048", "data.val_size=64", "data.test_size=48",
              "epochs=4", "optimizer.lr=0.003", "model.decoder_units=[64,256]"]  # ~25% of pairs right, 18 s
AFFINE = [*SMOKE, "data=affnist", "epochs=2"]
AFFINE_TEST = 128  # data.test_size of the smoke experiment: the affine set transforms these digits


def ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def read_csv(path):
    with open(path) as stream:
        rows = list(csv.DictReader(stream))
    lengths = np.array([[float(row[f"length_{k}"]) for k in range(10)] for row in rows])
    return rows, lengths


def tensorboard_scalars(folder):
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    return tags, lambda tag: float(tf.make_ndarray(events.Tensors(tag)[-1].tensor_proto))


def model_lengths(run, split):
    """Capsule lengths float [N, J] of the run's best checkpoint on `split` (the test split or an
    extra test set's name), computed in this process, with the labels of that split."""
    from capsrun.data.pipeline import to_unit_range
    from capsrun.training.restore import restore_run

    restored = restore_run(run, multi_digit=True)
    images = restored.splits.test if split == "test" else restored.splits.extra_tests[split]
    return restored.model(to_unit_range(images.images), training=False)["scores"].numpy(), images.labels


@pytest.fixture(scope="module")
def affine_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("affine") / "run"
    ok(run_cli("train", *AFFINE, f"hydra.run.dir={run}"))
    return run, ok(run_cli("eval", f"run_dir={run}"))


@pytest.fixture(scope="module")
def multimnist_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("multimnist") / "run"
    ok(run_cli("train", *MULTIMNIST, f"hydra.run.dir={run}"))
    return run, ok(run_cli("eval", f"run_dir={run}"))


def test_affine_eval_reports_the_untransformed_and_the_affine_set(affine_run):
    run, result = affine_run
    report = json.loads((run / "eval.json").read_text())
    affine = report["extra_tests"]["affine"]
    assert report["data"] == "affnist" and report["digits_per_image"] == 1 and list(report["extra_tests"]) == ["affine"]
    tags, scalar = tensorboard_scalars(run)
    for numbers, suffix, tag in ((report, "", "test"), (affine, "_affine", "test/affine")):
        rows, lengths = read_csv(run / f"eval_predictions{suffix}.csv")
        labels = np.array([int(row["label"]) for row in rows])
        assert len(rows) == numbers["num_examples"] == AFFINE_TEST == sum(numbers["per_class_count"])
        correct = int(np.sum(lengths.argmax(axis=1) == labels))
        assert numbers["test_accuracy"] == correct / AFFINE_TEST
        assert numbers["num_misclassified"] == AFFINE_TEST - correct
        assert numbers["test_error_percent"] == pytest.approx(100 * (1 - numbers["test_accuracy"]))
        assert np.trace(np.array(numbers["confusion_matrix"])) == correct
        assert 0 < numbers["reconstruction_error"] < 1
        assert (run / f"confusion_matrix{suffix}.png").is_file() and (run / f"misclassified{suffix}.png").is_file()
        assert {f"{tag}/accuracy", f"{tag}/error_percent", f"{tag}/confusion_matrix", f"{tag}/misclassified"} <= tags
        assert scalar(f"{tag}/accuracy") == pytest.approx(numbers["test_accuracy"])
        heading = "test accuracy        " if tag == "test" else "affine test set       accuracy"
        assert f"{heading} {numbers['test_accuracy']:.2%} (error {numbers['test_error_percent']:.2f}%" in result.stdout
        computed, split_labels = model_lengths(run, "test" if not suffix else "affine")
        assert np.array_equal(split_labels, labels)  # the same digits, transformed
        np.testing.assert_allclose(lengths, computed, atol=2e-5)  # each CSV holds its own set's outputs
    assert report["test_accuracy"] > 0.3  # the run learned something: the affine set is a harder test of it
    assert not np.allclose(read_csv(run / "eval_predictions_affine.csv")[1], read_csv(run / "eval_predictions.csv")[1])


def test_multimnist_accuracy_counts_an_image_when_both_digits_are_the_two_longest_capsules(multimnist_run):
    run, result = multimnist_run
    report = json.loads((run / "eval.json").read_text())
    assert report["digits_per_image"] == 2 and "confusion_matrix" not in report and report["extra_tests"] == {}
    rows, lengths = read_csv(run / "eval_predictions.csv")
    labels = np.array([[int(row["label_1"]), int(row["label_2"])] for row in rows])
    predicted = np.array([[int(row["predicted_1"]), int(row["predicted_2"])] for row in rows])
    computed, split_labels = model_lengths(run, "test")
    np.testing.assert_allclose(lengths, computed, atol=2e-5)
    assert np.array_equal(labels, split_labels) and np.all(labels[:, 0] != labels[:, 1])
    longest = np.argsort(-computed, axis=1)[:, :2]
    both = np.array([set(top) == set(pair) for top, pair in zip(longest, labels, strict=True)])
    assert np.array_equal(np.sort(longest, axis=1), predicted)
    assert [int(row["correct"]) for row in rows] == both.astype(int).tolist()
    assert len(rows) == report["num_examples"] == 48
    assert report["test_accuracy"] == both.mean() > 0.05  # chance: 1 / 45 pairs
    assert report["num_misclassified"] == int((~both).sum())
    assert report["test_error_percent"] == pytest.approx(100 * (1 - both.mean()))
    one_right = np.array([len(set(top) & set(pair)) == 1 for top, pair in zip(longest, labels, strict=True)])
    assert one_right.any()  # images with one digit right count as wrong: the check above means something
    for digit in range(10):
        holding = np.any(labels == digit, axis=1)
        assert report["per_class_count"][digit] == holding.sum()
        if holding.any():
            assert report["per_class_accuracy"][digit] == pytest.approx(np.mean(np.any(longest[holding] == digit,
                                                                                       axis=1)))
    assert 0 < report["reconstruction_error"] < 1
    assert (run / "misclassified.png").is_file() and not (run / "confusion_matrix.png").exists()
    tags, scalar = tensorboard_scalars(run)
    assert {"test/accuracy", "test/reconstruction_error", "test/misclassified"} <= tags
    assert "test/confusion_matrix" not in tags
    assert scalar("test/accuracy") == pytest.approx(report["test_accuracy"])
    assert f"test accuracy         {report['test_accuracy']:.2%}" in result.stdout
    assert "per-digit recall" in result.stdout


def test_multimnist_visualize_draws_figure_5_in_two_colours(multimnist_run):
    run, _ = multimnist_run
    result = ok(run_cli("visualize", f"run_dir={run}", "num_reconstructions=12", "dpi=80"))
    figure = run / "multimnist_reconstructions.png"
    assert f"{figure} (880x{round(80 * (0.8 + 2.3 * 2))})" in result.stdout  # 12 images: 2 groups of 10
    with Image.open(figure) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert pixels.shape == (round(80 * 5.4), 880, 3)
    red, green = pixels[..., 0], pixels[..., 1]
    # Captions are black or firebrick; only the second digit's reconstruction makes pixels green.
    assert np.sum(green > red + 30) > 300
    assert np.sum(red > green + 30) > 300
    assert not (run / "perturbations.png").exists() and (run / "capsule_lengths.png").is_file()
    tags, _ = tensorboard_scalars(run)
    assert {"visualize/multimnist_reconstructions", "visualize/capsule_lengths"} <= tags


def test_figure_5_reconstructs_each_digit_from_its_own_capsule(multimnist_run):
    from capsrun.analysis.capsules import separate_reconstructions
    from capsrun.analysis.figures import OVERLAY_BACKGROUND, colour_overlay
    from capsrun.data.pipeline import to_unit_range
    from capsrun.training.restore import restore_run

    restored = restore_run(multimnist_run[0], multi_digit=True)
    images = to_unit_range(restored.splits.test.images[:6]).numpy()
    reconstructions, predicted, lengths = separate_reconstructions(restored.model, images)
    assert reconstructions.shape == (6, 2, 36, 36, 1) and predicted.shape == (6, 2)
    capsules = restored.model.capsules(images)
    for k in range(2):
        alone = restored.model.reconstruct(capsules, tf.constant(predicted[:, k])).numpy()
        np.testing.assert_allclose(reconstructions[:, k], alone, atol=1e-6)
    assert np.abs(reconstructions[:, 0] - reconstructions[:, 1]).mean() > 0.01  # two different digits
    overlay = colour_overlay(images[0], reconstructions[0])
    grey = OVERLAY_BACKGROUND * images[0, ..., 0]
    np.testing.assert_allclose(overlay[..., 0], np.clip(grey + reconstructions[0, 0, ..., 0], 0, 1), atol=1e-6)
    np.testing.assert_allclose(overlay[..., 1], np.clip(grey + reconstructions[0, 1, ..., 0], 0, 1), atol=1e-6)
    np.testing.assert_allclose(overlay[..., 2], grey, atol=1e-6)
    assert np.array_equal(np.sort(np.argsort(-lengths, axis=1)[:, :2], axis=1), predicted)


def test_multimnist_run_is_refused_by_one_digit_commands(multimnist_run, tmp_path):
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255
    Image.fromarray(digit).save(tmp_path / "one.png")
    result = run_cli("predict", f"run_dir={multimnist_run[0]}", f"images=[{tmp_path / 'one.png'}]")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "trained on images holding 2 digits; this command takes one digit per image" in last_stderr_line(result)


@pytest.mark.slow
def test_multimnist_visualize_chosen_images_and_bad_index(multimnist_run, tmp_path):
    run = multimnist_run[0]
    ok(run_cli("visualize", f"run_dir={run}", "indices=[3,7,11]", f"output_dir={tmp_path}", "dpi=50"))
    with Image.open(tmp_path / "multimnist_reconstructions.png") as image:
        assert image.size == (550, round(50 * 3.1))
    with Image.open(tmp_path / "capsule_lengths.png") as image:
        assert image.size == (450, round(50 * 3.3))  # 3 panels in one row
    bad = run_cli("visualize", f"run_dir={run}", "indices=[48]")
    assert bad.returncode == 2 and "index 48 is out of range: the test set has 48" in last_stderr_line(bad)


@pytest.mark.slow
def test_multimnist_eval_on_two_replicas_matches_one(multimnist_run, tmp_path):
    run = multimnist_run[0]
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(run, copy)
    ok(run_cli("eval", f"run_dir={copy}", "trainer.cpu_devices=2", "batch_size=10", "tensorboard=false"))
    one, two = (json.loads((folder / "eval.json").read_text()) for folder in (run, copy))
    assert two["replicas"] == 2 and two["test_accuracy"] == one["test_accuracy"]
    assert two["reconstruction_error"] == pytest.approx(one["reconstruction_error"], rel=1e-4)
    np.testing.assert_allclose(read_csv(copy / "eval_predictions.csv")[1], read_csv(run / "eval_predictions.csv")[1],
                               atol=2e-6)


@pytest.mark.slow
def test_multimnist_ensemble_takes_the_two_longest_mean_lengths_and_report_reads_it(tmp_path):
    sweep = tmp_path / "sweep"
    # Job folders named without the list override: TensorFlow's checkpoint lookup and reader treat
    # the path as a glob pattern, so a folder named `model.decoder_units=[64,256],...` would hide
    # its checkpoints from capsrun eval.
    ok(run_cli("train", "-m", *MULTIMNIST, "epochs=2", "seed=0,1", f"hydra.sweep.dir={sweep}",
               "hydra.sweep.subdir=seed${seed}"))
    result = ok(run_cli("eval", f"run_dir={sweep}"))
    ensemble = json.loads((sweep / "ensemble_eval.json").read_text())
    jobs = [sweep / run for run in ensemble["runs"]]
    (rows, first), (_, second) = (read_csv(job / "eval_predictions.csv") for job in jobs)
    labels = np.array([[int(row["label_1"]), int(row["label_2"])] for row in rows])
    top = np.sort(np.argsort(-(first + second), axis=1)[:, :2], axis=1)
    assert ensemble["ensemble_accuracy"] == pytest.approx(np.mean(np.all(top == np.sort(labels, axis=1), axis=1)),
                                                          abs=1.5 / len(labels))
    assert "confusion_matrix" not in ensemble and ensemble["num_examples"] == 48
    assert f"test accuracy {ensemble['ensemble_accuracy']:.2%}" in result.stdout
    report = ok(run_cli("report", f"sweep_dir={sweep}"))
    errors = [json.loads((job / "eval.json").read_text())["test_error_percent"] for job in jobs]
    assert f"{np.mean(errors):.2f} ± {np.std(errors, ddof=1):.3f}" in report.stdout


@pytest.mark.slow
def test_baseline_cnn_eval_visualize_and_report_against_capsnet(tmp_path):
    sweep = tmp_path / "sweep"
    ok(run_cli("train", "-m", *SMOKE, "data=affnist", "epochs=2", "model=capsnet,baseline_cnn",
               "model.cnn_channels=[8,8,4]", "model.fc_units=[16,8]", f"hydra.sweep.dir={sweep}",
               "hydra.sweep.subdir=${model.name}"))  # no `[` in the folder names (see above)
    report = ok(run_cli("report", f"sweep_dir={sweep}"))  # runs capsrun eval on both jobs
    jobs = {json.loads((job / "eval.json").read_text())["model"]: job for job in sweep.iterdir()
            if (job / ".hydra" / "config.yaml").is_file()}
    assert set(jobs) == {"capsnet", "baseline_cnn"}
    baseline = json.loads((jobs["baseline_cnn"] / "eval.json").read_text())
    assert baseline["reconstruction_error"] is None and "cross_entropy_loss" in baseline
    rows, lengths = read_csv(jobs["baseline_cnn"] / "eval_predictions_affine.csv")
    assert baseline["extra_tests"]["affine"]["test_accuracy"] == np.mean(
        lengths.argmax(axis=1) == np.array([int(row["label"]) for row in rows]))
    np.testing.assert_allclose(lengths.sum(axis=1), 1.0, atol=1e-4)  # softmax scores, not capsule lengths
    for model, job in jobs.items():
        error = json.loads((job / "eval.json").read_text())["test_error_percent"]
        assert any(f"name={model}" in line and f"{error:.2f}" in line for line in report.stdout.splitlines())
    refused = run_cli("visualize", f"run_dir={jobs['baseline_cnn']}")
    assert refused.returncode == 2 and "has no capsules to look inside" in last_stderr_line(refused)
    assert math.isfinite(baseline["loss"])


EFFICIENT = ["experiment=smoke", "model=efficient_capsnet", "optimizer.lr=0.003"]  # 256 digits, 8 steps


def test_efficient_capsnet_sweep_on_two_replicas_then_eval_and_visualize(tmp_path):
    """model=efficient_capsnet through `train -m` (one job, MirroredStrategy on 2 logical CPUs, so
    its synchronised batch norms run distributed), then eval and visualize of that job."""
    sweep = tmp_path / "sweep"
    ok(run_cli("train", "-m", *EFFICIENT, "trainer.cpu_devices=2", f"hydra.sweep.dir={sweep}",
               "hydra.sweep.subdir=job"))
    run = sweep / "job"
    assert "with 2 replica(s)" in (run / "train.log").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["global_step"] == 256 // 32
    assert math.isfinite(metrics["history"][0]["train_margin_loss"])
    evaluated = ok(run_cli("eval", f"run_dir={run}"))
    result = json.loads((run / "eval.json").read_text())
    assert result["model"] == "efficient_capsnet" and result["reconstruction_error"] is not None
    assert f"{result['test_error_percent']:.2f}" in evaluated.stdout
    rows, lengths = read_csv(run / "eval_predictions.csv")
    assert len(rows) == 128 and np.all((lengths > 0) & (lengths < 1))  # capsule lengths, squashed below 1
    shown = ok(run_cli("visualize", f"run_dir={run}"))
    for name in ("reconstructions.png", "perturbations.png", "capsule_lengths.png"):
        assert f"{run / name} (" in shown.stdout and (run / name).stat().st_size > 0
