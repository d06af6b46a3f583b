"""The numbers `capsrun eval` reports: eval.json's per-test-set numbers, the per-image predictions
CSV, the printed summary and ensembles of several runs (mean class scores).

Outputs of one test set are numpy arrays: `labels` int [N] (or [N, T] for T objects per image),
`scores` float32 [N, J] (capsule lengths of a CapsNet), `predictions` int [N] (or [N, T]).
MultiMNIST images count as correct when their two digits are the two best scores;
per_class_accuracy is then each digit's recall.
"""
import csv
import io
from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np

from capsrun.errors import CapsrunError
from capsrun.models.base import SCORES
from capsrun.numbers import percent, percent_points


def top_classes(scores: np.ndarray, num_targets: int) -> np.ndarray:
    """The predicted classes from scores float [N, J]: int [N] (the longest capsule), or for K > 1
    targets the K longest in increasing class order, int [N, K] (as CapsNet.predict_labels)."""
    if num_targets == 1:
        return np.argmax(scores, axis=-1)
    return np.sort(np.argsort(-scores, axis=-1, kind="stable")[:, :num_targets], axis=-1)


def correct_mask(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """bool [N]: labels and predictions int [N], or [N, K] (right when the sets of K classes agree)."""
    if labels.ndim == 1:
        return labels == predictions
    return np.all(np.sort(labels, axis=-1) == np.sort(predictions, axis=-1), axis=-1)


def per_class_recall(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> Tuple[list, list]:
    """(count int [J] of the images holding class k, share float [J] of them whose prediction
    includes k; None where the count is 0). One label per image: the per-class accuracy; K digits
    per image: how often digit k is among the K longest capsules when it is present."""
    labels, predictions = labels.reshape(len(labels), -1), predictions.reshape(len(predictions), -1)
    classes = np.arange(num_classes)
    present = np.any(labels[:, :, None] == classes, axis=1)                      # [N, J]
    found = present & np.any(predictions[:, :, None] == classes, axis=1)         # [N, J]
    counts, hits = present.sum(axis=0), found.sum(axis=0)
    return ([int(count) for count in counts],
            [None if count == 0 else float(hit) / float(count) for hit, count in zip(hits, counts, strict=True)])


def mean_image_error(train_images: np.ndarray, images: np.ndarray, chunk: int = 2048) -> float:
    """Mean squared error per pixel of predicting the mean training image for every image.

    train_images uint8 [N_train, H, W, C], images uint8 [N, H, W, C] -> float (pixels in [0, 1]).
    The mean image is the best constant answer under squared error, and what a decoder that
    ignores its capsules learns first, so it is the bar a reconstruction must clear. Chunked so
    that a large test set never needs float64 copies of all its pixels.
    """
    mean = train_images.mean(axis=0, dtype=np.float64) / 255.0                     # [H, W, C]
    total = 0.0
    for start in range(0, len(images), chunk):
        total += float(np.sum(np.square(images[start:start + chunk] / 255.0 - mean)))
    return total / max(images.size, 1)


def reconstruction_line(report: Mapping[str, Any]) -> str:
    """The summary's reconstruction line: the error, and the mean-digit bar when it is known."""
    error = report["reconstruction_error"]
    if error is None:
        return "  reconstruction error  n/a (the model has no decoder)"
    bar = report.get("mean_digit_error")
    versus = "" if bar is None else f"; predicting the mean training digit: {bar:.5f}"
    return f"  reconstruction error  {error:.5f} (mean squared error per pixel{versus})"


def set_report(metrics: Mapping[str, Any], labels: np.ndarray) -> Dict[str, Any]:
    """eval.json's numbers for one test set: Evaluator metrics (with kept outputs) and its labels
    int [N] or [N, K]. The confusion matrix only for one label per image."""
    predictions = metrics["predictions"]
    right = correct_mask(labels, predictions)
    count, correct = len(right), int(right.sum())
    counts, recall = per_class_recall(labels, predictions, metrics[SCORES].shape[1])
    report = {
        "num_examples": count,
        "test_accuracy": correct / count,
        "test_error_percent": 100.0 * (count - correct) / count,
        "num_misclassified": count - correct,
        "per_class_accuracy": recall,
        "per_class_count": counts,
        "reconstruction_error": metrics.get("reconstruction_error"),  # None for a model without decoder
        **{key: value for key, value in metrics.items() if key.endswith("loss")},  # loss and its terms
    }
    if "confusion_matrix" in metrics:
        report["confusion_matrix"] = metrics["confusion_matrix"].tolist()
    return report


def predictions_csv(outputs: Mapping[str, np.ndarray]) -> bytes:
    """One row per test image. One label per image: index,label,predicted,confidence,runner_up,
    length_0..length_{J-1}; K digits per image: index,label_1..label_K,predicted_1..predicted_K
    (the K longest capsules, increasing class order),correct,length_0..length_{J-1}."""
    lengths, labels, predictions = outputs[SCORES], outputs["labels"], outputs["predictions"]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    length_columns = [f"length_{k}" for k in range(lengths.shape[1])]
    if labels.ndim == 1:
        order = np.argsort(-lengths, axis=1, kind="stable")
        writer.writerow(["index", "label", "predicted", "confidence", "runner_up", *length_columns])
        for index, (label, row, ranked) in enumerate(zip(labels, lengths, order, strict=True)):
            writer.writerow([index, int(label), int(ranked[0]), f"{row[ranked[0]]:.6f}", int(ranked[1]),
                             *[f"{value:.6f}" for value in row]])
        return text.getvalue().encode()
    digits = labels.shape[1]
    writer.writerow(["index", *[f"label_{k + 1}" for k in range(digits)],
                     *[f"predicted_{k + 1}" for k in range(digits)], "correct", *length_columns])
    right = correct_mask(labels, predictions)
    for index, (label, predicted, ok, row) in enumerate(zip(labels, predictions, right, lengths, strict=True)):
        writer.writerow([index, *map(int, label), *map(int, predicted), int(ok), *[f"{value:.6f}" for value in row]])
    return text.getvalue().encode()


def format_report(report: Mapping[str, Any]) -> str:
    """The human-readable summary of one run printed on stdout: the test split in full, then one
    line per extra test set."""
    digits = report["digits_per_image"]
    per_class = "  ".join(f"{k}: {percent(v)}"
                          for k, v in enumerate(report["per_class_accuracy"]))
    lines = [
        f"run {report['run_dir']}",
        f"  checkpoint            {report['checkpoint']} (step {report['step']})",
        f"  test digits           {report['num_examples']:,}" if digits == 1 else
        f"  test images           {report['num_examples']:,} ({digits} digits each; correct = both are the "
        f"{digits} longest capsules)",
        f"  test accuracy         {percent(report['test_accuracy'])} "
        f"(error {percent_points(report['test_error_percent'])}, "
        f"{report['num_misclassified']:,} misclassified)",
        reconstruction_line(report),
        f"  per-class accuracy    {per_class}" if digits == 1 else f"  per-digit recall      {per_class}",
    ]
    for name, numbers in report["extra_tests"].items():
        lines.append(f"  {name + ' test set':<22}accuracy {percent(numbers['test_accuracy'])} (error "
                     f"{percent_points(numbers['test_error_percent'])}, {numbers['num_misclassified']:,} of "
                     f"{numbers['num_examples']:,} misclassified)")
    if "confusion_matrix" in report:
        confusion = np.asarray(report["confusion_matrix"])
        width = max(4, len(str(confusion.max())) + 1)
        lines += ["  confusion matrix (rows: true class, columns: predicted class)",
                  "      " + "".join(f"{k:>{width}}" for k in range(confusion.shape[0]))]
        lines += [f"  {k:>3} " + "".join(f"{value:>{width}}" for value in row) for k, row in enumerate(confusion)]
    return "\n".join(lines)


def ensemble_set(members: Sequence[Mapping[str, np.ndarray]], labels: np.ndarray, num_targets: int) -> Dict[str, Any]:
    """Averages the capsule lengths [N, J] of the members' outputs on one test set; the K longest
    mean lengths are the prediction. Returns its JSON-ready numbers."""
    mean_lengths = np.mean([output[SCORES] for output in members], axis=0)
    predicted = top_classes(mean_lengths, num_targets)
    right = correct_mask(labels, predicted)
    count, correct = len(labels), int(right.sum())
    numbers = {"num_examples": count, "ensemble_accuracy": correct / count,
               "ensemble_error_percent": 100.0 * (count - correct) / count}
    if labels.ndim == 1:
        classes = mean_lengths.shape[1]
        confusion = np.zeros((classes, classes), dtype=np.int64)
        np.add.at(confusion, (labels, predicted), 1)
        numbers["confusion_matrix"] = confusion.tolist()
    return numbers


def ensemble(reports: Sequence[Mapping[str, Any]],
             all_sets: Sequence[Mapping[str, Mapping[str, np.ndarray]]]) -> Dict[str, Any]:
    """The ensemble of several runs on their shared test sets (they must hold the same images)."""
    first = all_sets[0]
    for report, sets in zip(reports[1:], all_sets[1:], strict=True):
        for name, outputs in first.items():
            other = sets.get(name, {}).get("labels")
            if other is None or other.shape != outputs["labels"].shape or not np.array_equal(other, outputs["labels"]):
                raise CapsrunError(f"{report['run_dir']} was evaluated on other {name} images than "
                                   f"{reports[0]['run_dir']}; an ensemble needs the same test set (set data.test_size "
                                   "for all, and the same data)")
    digits = reports[0]["digits_per_image"]
    result = {
        "runs": [report["run_dir"] for report in reports],
        "checkpoints": [report["checkpoint"] for report in reports],
        **ensemble_set([sets["test"] for sets in all_sets], first["test"]["labels"], digits),
        "member_accuracies": [report["test_accuracy"] for report in reports],
        "extra_tests": {},
    }
    result["mean_member_accuracy"] = float(np.mean(result["member_accuracies"]))
    result["best_member_accuracy"] = float(np.max(result["member_accuracies"]))
    for name in first:
        if name != "test":
            result["extra_tests"][name] = {
                **ensemble_set([sets[name] for sets in all_sets], first[name]["labels"], digits),
                "member_accuracies": [report["extra_tests"][name]["test_accuracy"] for report in reports]}
    return result
