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
