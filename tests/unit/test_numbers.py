"""Accuracies and errors in text: percentages with two decimals, whatever form the number has."""
import pytest

from capsrun.analysis.metrics import format_report
from capsrun.numbers import percent, percent_points


@pytest.mark.parametrize("fraction,text", [(0.9852, "98.52%"), (1.0, "100.00%"), (0.0625, "6.25%"), (0, "0.00%"),
                                           (None, "n/a")])
def test_an_accuracy_fraction_reads_as_a_percentage_with_two_decimals(fraction, text):
    assert percent(fraction) == text


def test_a_number_already_in_percent_reads_the_same_way():
    assert percent_points(1.48) == "1.48%" and percent_points(0.25, sign=False) == "0.25"
    assert percent(0.9852, sign=False) == "98.52" and percent_points(None) == "n/a"


def test_the_eval_summary_prints_every_accuracy_and_error_with_two_decimals():
    report = {"run_dir": "r", "checkpoint": "r/ckpt-1", "step": 1, "digits_per_image": 1, "num_examples": 10000,
              "test_accuracy": 0.9852, "test_error_percent": 1.48, "num_misclassified": 148,
              "reconstruction_error": 0.05, "per_class_accuracy": [0.998, 0.5, None], "extra_tests": {
                  "affine": {"test_accuracy": 0.791, "test_error_percent": 20.9, "num_misclassified": 2090,
                             "num_examples": 10000}}}
    text = format_report(report)
    assert "test accuracy         98.52% (error 1.48%, 148 misclassified)" in text
    assert "0: 99.80%  1: 50.00%  2: n/a" in text
    assert "accuracy 79.10% (error 20.90%, 2,090 of 10,000 misclassified)" in text
