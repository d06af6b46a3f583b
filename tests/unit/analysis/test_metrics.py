"""Ensembles of runs: mean scores, two-digit images, extra test sets."""
import numpy as np
import pytest


def test_ensemble_of_two_digit_runs_with_an_extra_test_set():
    from capsrun.analysis.metrics import ensemble
    from capsrun.errors import CapsrunError

    pairs = np.array([[0, 1], [2, 3], [4, 5]])
    first = np.array([[.9, .8, .1, .1, .1, .1], [.1, .1, .9, .1, .8, .1], [.6, .1, .1, .1, .9, .5]])
    second = np.array([[.1, .9, .1, .1, .1, .1], [.1, .1, .7, .9, .1, .1], [.1, .1, .1, .7, .6, .9]])
    affine_labels = np.array([[1, 2], [3, 4], [0, 5]])
    runs = [{"test": {"labels": pairs, "scores": lengths},
             "affine": {"labels": affine_labels, "scores": lengths[:, ::-1]}} for lengths in (first, second)]
    reports = [{"run_dir": f"run{k}", "checkpoint": "best", "digits_per_image": 2, "test_accuracy": 0.5,
                "extra_tests": {"affine": {"test_accuracy": 0.25}}} for k in range(2)]
    result = ensemble(reports, runs)
    # mean lengths: image 0 -> (0, 1); image 1 -> (2, 3) (class 3's mean 0.5 beats class 4's 0.45);
    # image 2 -> (4, 5), although the members alone say (0, 4) and (3, 5): all right.
    assert result["ensemble_accuracy"] == 1.0 and "confusion_matrix" not in result
    # reversed lengths: image 0 -> classes (4, 5), image 1 -> (2, 3), image 2 -> (0, 1): none right
    assert result["extra_tests"]["affine"]["ensemble_accuracy"] == 0.0
    assert result["extra_tests"]["affine"]["member_accuracies"] == [0.25, 0.25]
    runs[1]["affine"]["labels"] = affine_labels[::-1]
    with pytest.raises(CapsrunError, match="other affine images than run0"):
        ensemble(reports, runs)


def test_mean_image_error_is_the_error_of_the_mean_training_image():
    from capsrun.analysis.metrics import mean_image_error

    train = np.zeros((4, 2, 2, 1), np.uint8)
    train[:2] = 255                                   # the mean training image is 0.5 everywhere
    test = np.zeros((5, 2, 2, 1), np.uint8)
    test[0, 0, 0, 0] = 255                            # one pixel at 1.0: error 0.25 like the zeros
    assert mean_image_error(train, test) == pytest.approx(0.25)
    rng = np.random.default_rng(0)
    train, test = (rng.integers(0, 256, size=(n, 3, 3, 1), dtype=np.uint8) for n in (7, 11))
    expected = np.mean((test / 255.0 - train.mean(axis=0) / 255.0) ** 2)
    assert mean_image_error(train, test, chunk=3) == pytest.approx(expected, rel=1e-12)  # chunks add up


def test_summary_puts_the_reconstruction_error_next_to_the_mean_digit():
    from capsrun.analysis.metrics import reconstruction_line

    line = reconstruction_line({"reconstruction_error": 0.0312, "mean_digit_error": 0.1012})
    assert line.strip() == ("reconstruction error  0.03120 (mean squared error per pixel; predicting the mean "
                            "training digit: 0.10120)")
    assert "n/a" in reconstruction_line({"reconstruction_error": None})
