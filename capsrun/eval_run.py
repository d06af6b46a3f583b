"""`capsrun eval run_dir=PATH`: measures trained runs on their test sets, alone and as an ensemble.

Per run, into its folder: eval.json (the numbers), eval_predictions.csv (every test image's
label(s), prediction(s) and capsule lengths), misclassified.png, confusion_matrix.png (one label
per image) and test/* in its TensorBoard. eval.json keeps the test split's numbers at the top
level (test_accuracy, test_error_percent, ...); every extra test set of the data (affnist: the
affine set) is evaluated too, its numbers under extra_tests[name] with the same keys, its files
suffixed `_<name>` and its TensorBoard tags under test/<name>/. MultiMNIST images count as
correct when their two digits are the two longest capsules; per_class_accuracy is then each
digit's recall. Several runs are also combined into an ensemble that averages their capsule
lengths (the paper's CIFAR-10 result is an ensemble of 7 models).
"""
import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
from omegaconf import MISSING

from capsrun.atomic import write_bytes_atomic
from capsrun.errors import CapsrunError
from capsrun.inspection import (
    check_output_folder,
    choice,
    command_config,
    expand_run_dirs,
    is_run,
    load_config,
    restore_run,
    say,
    test_size_setting,
    write_tensorboard,
)

DEVICE_KEYS = ("strategy", "devices", "cpu_devices", "jit_compile")


@dataclass
class EvalData:
    test_size: Any = None


@dataclass
class EvalDevices:
    strategy: Optional[str] = None
    devices: Optional[List[str]] = None
    cpu_devices: Optional[int] = None
    jit_compile: Optional[str] = None


@dataclass
class EvalConfig:
    """Schema of conf/eval.yaml (the comments there explain every key)."""

    run_dir: Any = MISSING
    checkpoint: str = "best"
    batch_size: Optional[int] = None
    data: EvalData = field(default_factory=EvalData)
    trainer: EvalDevices = field(default_factory=EvalDevices)
    max_misclassified: int = 50
    dpi: int = 100
    tensorboard: bool = True
    ensemble_file: Optional[str] = None


def check_settings(cfg):
    if cfg.batch_size is not None and cfg.batch_size < 1:
        raise CapsrunError(f"batch_size must be null or >= 1, got {cfg.batch_size}")
    if cfg.max_misclassified < 0:
        raise CapsrunError(f"max_misclassified must be >= 0, got {cfg.max_misclassified}")
    check_dpi(cfg.dpi)
    test_size_setting(cfg.data.test_size, None)
    if cfg.trainer.jit_compile is not None:
        choice(cfg.trainer.jit_compile, ("auto", "true", "false"), "trainer.jit_compile")


def check_dpi(dpi):
    if not 20 <= dpi <= 600:
        raise CapsrunError(f"dpi must be in [20, 600], got {dpi}")


def device_overrides(cfg):
    """The eval command's trainer.* settings that replace the run's (those not null)."""
    return {key: cfg.trainer[key] for key in DEVICE_KEYS if cfg.trainer[key] is not None}


def top_classes(lengths, num_targets):
    """The predicted classes from scores float [N, J]: int [N] (the longest capsule), or for K > 1
    targets the K longest in increasing class order, int [N, K] (as CapsNet.predict_labels)."""
    if num_targets == 1:
        return np.argmax(lengths, axis=-1)
    return np.sort(np.argsort(-lengths, axis=-1, kind="stable")[:, :num_targets], axis=-1)


def correct_mask(labels, predictions):
    """bool [N]: labels and predictions int [N], or [N, K] (right when the sets of K classes agree)."""
    if labels.ndim == 1:
        return labels == predictions
    return np.all(np.sort(labels, axis=-1) == np.sort(predictions, axis=-1), axis=-1)


def per_class_recall(labels, predictions, num_classes):
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


def set_report(metrics, labels):
    """eval.json's numbers for one test set: Evaluator metrics (with kept outputs) and its labels
    int [N] or [N, K]. The confusion matrix only for one label per image."""
    predictions = metrics["predictions"]
    right = correct_mask(labels, predictions)
    count, correct = len(right), int(right.sum())
    counts, recall = per_class_recall(labels, predictions, metrics["lengths"].shape[1])
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


def evaluate_run(run_dir, cfg, strategy):
    """Evaluates one run on its test split and every extra test set (affnist: "affine").

    Returns (report, sets): report = the JSON-ready dict of eval.json (the test split's numbers at
    the top level, each extra set's under extra_tests[name]); sets = {"test" or the extra set's
    name: outputs}, outputs = numpy arrays `labels` int [N] (or [N, K] for K digits per image),
    `lengths` float32 [N, J], `predictions` int [N] (or [N, K]), `images` uint8 [N, H, W, C].
    """
    from capsrun.distribute import check_batch_size, use_jit
    from capsrun.evaluation import Evaluator

    restored = restore_run(run_dir, cfg.checkpoint, cfg.data.test_size, device_overrides(cfg), strategy,
                           multi_digit=True)
    run_cfg, splits = restored.cfg, restored.splits
    batch_size = cfg.batch_size or run_cfg.trainer.eval_batch_size or run_cfg.batch_size
    check_batch_size(batch_size, strategy)
    extra = "".join(f" + {len(split):,} {name}" for name, split in splits.extra_tests.items())
    say(f"capsrun eval: {run_dir}: {len(splits.test):,} test images{extra}, checkpoint {restored.checkpoint}, "
        f"{strategy.num_replicas_in_sync} replica(s)")
    evaluator = Evaluator(restored.model, run_cfg.loss, strategy, batch_size, jit_compile=use_jit(run_cfg.trainer))
    reports, sets = {}, {}
    for name, split in {"test": splits.test, **splits.extra_tests}.items():
        metrics = evaluator.run(split, keep_outputs=True)
        reports[name] = set_report(metrics, split.labels)
        sets[name] = {"labels": split.labels, "lengths": metrics["lengths"], "predictions": metrics["predictions"],
                      "images": split.images}
    report = {
        "run_dir": str(run_dir),
        "checkpoint": restored.checkpoint,
        "step": restored.step,
        "model": run_cfg.model.name,
        "data": run_cfg.data.name,
        "digits_per_image": splits.num_targets,
        **reports.pop("test"),
        "extra_tests": reports,
        "test_size": run_cfg.data.test_size,
        "batch_size": batch_size,
        "replicas": strategy.num_replicas_in_sync,
    }
    return report, sets


def predictions_csv(outputs):
    """One row per test image. One label per image: index,label,predicted,confidence,runner_up,
    length_0..length_{J-1}; K digits per image: index,label_1..label_K,predicted_1..predicted_K
    (the K longest capsules, increasing class order),correct,length_0..length_{J-1}."""
    lengths, labels, predictions = outputs["lengths"], outputs["labels"], outputs["predictions"]
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


def run_title(run_dir):
    parts = Path(run_dir).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else str(run_dir)


def set_suffix(name):
    """File-name suffix and TensorBoard prefix of a test set: ("", "test") for the test split,
    ("_affine", "test/affine") for the extra set "affine"."""
    return ("", "test") if name == "test" else (f"_{name}", f"test/{name}")


def make_figures(numbers, outputs, name, title, cfg):
    """{figure: PNG bytes} for test set `name` (numbers: its part of eval.json): misclassified,
    and confusion_matrix for one label per image."""
    from capsrun import figures

    what = "test images" if name == "test" else f"{name} test images"
    pngs = {}
    if "confusion_matrix" in numbers:
        confusion_title = (f"{title}: {numbers['num_examples'] - numbers['num_misclassified']:,} of "
                           f"{numbers['num_examples']:,} {what} correct\n(accuracy "
                           f"{numbers['test_accuracy']:.2%}, error {numbers['test_error_percent']:.2f}%)")
        pngs["confusion_matrix"] = figures.to_png(
            figures.confusion_matrix_figure(np.asarray(numbers["confusion_matrix"]), confusion_title), cfg.dpi)
    labels, predictions = outputs["labels"], outputs["predictions"]
    wrong = np.flatnonzero(~correct_mask(labels, predictions))
    shown = wrong[: cfg.max_misclassified]
    chosen = predictions[shown].reshape(len(shown), -1)
    confidences = np.take_along_axis(outputs["lengths"][shown], chosen, axis=1).reshape(predictions[shown].shape)
    grid = figures.misclassified_figure(outputs["images"][shown], labels[shown], predictions[shown], confidences,
                                        shown, len(wrong), title if name == "test" else f"{title} ({name} test set)")
    pngs["misclassified"] = figures.to_png(grid, cfg.dpi)
    return pngs


def write_outputs(report, sets, cfg):
    """Writes every file of one run (each one atomically) and its TensorBoard summaries; returns
    the names of the files written."""
    from capsrun.atomic import write_json_atomic

    run_dir = Path(report["run_dir"])
    scalars, images, written = {}, {}, ["eval.json"]
    for name, outputs in sets.items():
        numbers = report if name == "test" else report["extra_tests"][name]
        suffix, tag = set_suffix(name)
        pngs = make_figures(numbers, outputs, name, run_title(run_dir), cfg)
        for figure, png in pngs.items():
            write_bytes_atomic(run_dir / f"{figure}{suffix}.png", png)
            images[f"{tag}/{figure}"] = png
        write_bytes_atomic(run_dir / f"eval_predictions{suffix}.csv", predictions_csv(outputs))
        written += [f"eval_predictions{suffix}.csv", *[f"{figure}{suffix}.png" for figure in pngs]]
        scalars.update({f"{tag}/accuracy": numbers["test_accuracy"], f"{tag}/error_percent":
                        numbers["test_error_percent"], f"{tag}/loss": numbers["loss"]})
        if numbers["reconstruction_error"] is not None:
            scalars[f"{tag}/reconstruction_error"] = numbers["reconstruction_error"]
        scalars.update({f"{tag}/per_class_accuracy/{k}": value
                        for k, value in enumerate(numbers["per_class_accuracy"]) if value is not None})
    write_json_atomic(run_dir / "eval.json", report)
    if cfg.tensorboard:
        write_tensorboard(run_dir, report["step"], scalars, images)
    return written


def format_report(report):
    """The human-readable summary of one run printed on stdout: the test split in full, then one
    line per extra test set."""
    digits = report["digits_per_image"]
    per_class = "  ".join(f"{k}: {'n/a' if v is None else f'{v:.1%}'}"
                          for k, v in enumerate(report["per_class_accuracy"]))
    lines = [
        f"run {report['run_dir']}",
        f"  checkpoint            {report['checkpoint']} (step {report['step']})",
        f"  test digits           {report['num_examples']:,}" if digits == 1 else
        f"  test images           {report['num_examples']:,} ({digits} digits each; correct = both are the "
        f"{digits} longest capsules)",
        f"  test accuracy         {report['test_accuracy']:.2%} (error {report['test_error_percent']:.2f}%, "
        f"{report['num_misclassified']:,} misclassified)",
        f"  reconstruction error  {report['reconstruction_error']:.5f} (mean squared error per pixel)"
        if report["reconstruction_error"] is not None else "  reconstruction error  n/a (the model has no decoder)",
        f"  per-class accuracy    {per_class}" if digits == 1 else f"  per-digit recall      {per_class}",
    ]
    for name, numbers in report["extra_tests"].items():
        lines.append(f"  {name + ' test set':<22}accuracy {numbers['test_accuracy']:.2%} (error "
                     f"{numbers['test_error_percent']:.2f}%, {numbers['num_misclassified']:,} of "
                     f"{numbers['num_examples']:,} misclassified)")
    if "confusion_matrix" in report:
        confusion = np.asarray(report["confusion_matrix"])
        width = max(4, len(str(confusion.max())) + 1)
        lines += ["  confusion matrix (rows: true class, columns: predicted class)",
                  "      " + "".join(f"{k:>{width}}" for k in range(confusion.shape[0]))]
        lines += [f"  {k:>3} " + "".join(f"{value:>{width}}" for value in row) for k, row in enumerate(confusion)]
    return "\n".join(lines)


def ensemble_set(members, labels, num_targets):
    """Averages the capsule lengths [N, J] of the members' outputs on one test set; the K longest
    mean lengths are the prediction. Returns its JSON-ready numbers."""
    mean_lengths = np.mean([output["lengths"] for output in members], axis=0)
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


def ensemble(reports, all_sets):
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


def ensemble_path(cfg):
    if cfg.ensemble_file:
        path = Path(cfg.ensemble_file).expanduser()
        if not path.parent.is_dir():
            raise CapsrunError(f"ensemble_file {path}: folder {path.parent} does not exist")
        return path
    items = list(cfg.run_dir) if not isinstance(cfg.run_dir, str) else [cfg.run_dir]
    if len(items) == 1 and not is_run(Path(str(items[0])).expanduser()):
        return Path(str(items[0])).expanduser() / "ensemble_eval.json"
    return None


def make_strategy_for(run_dir, cfg):
    """Devices and strategy from the first run's trainer settings with the command's overrides."""
    from capsrun.distribute import make_strategy, setup_devices

    run_cfg = load_config(run_dir, cfg.data.test_size, device_overrides(cfg))
    setup_devices(run_cfg.trainer, run_cfg.seed)
    return make_strategy(run_cfg.trainer)


def eval_command(args):
    cfg = command_config("eval", EvalConfig, args)
    if cfg is None:
        return 0
    check_settings(cfg)
    runs = expand_run_dirs(cfg.run_dir)
    if len(runs) > 1 and cfg.checkpoint not in ("best", "last"):
        raise CapsrunError("checkpoint=PATH names one checkpoint; with several runs use checkpoint=best or last")
    target = ensemble_path(cfg) if len(runs) > 1 else None
    for run in runs:
        check_output_folder(run)
    strategy = make_strategy_for(runs[0], cfg)
    reports, all_sets = [], []
    for run in runs:
        report, sets = evaluate_run(run, cfg, strategy)
        written = write_outputs(report, sets, cfg)
        print(format_report(report))
        print(f"  wrote {run / written[0]}, {', '.join(written[1:])}", flush=True)
        reports.append(report)
        all_sets.append({name: {key: value for key, value in outputs.items() if key != "images"}
                         for name, outputs in sets.items()})
    if len(runs) > 1:
        from capsrun.atomic import write_json_atomic

        result = ensemble(reports, all_sets)
        print(f"ensemble of {len(runs)} runs (mean capsule lengths): test accuracy {result['ensemble_accuracy']:.2%} "
              f"(error {result['ensemble_error_percent']:.2f}%); members: "
              + ", ".join(f"{value:.2%}" for value in result["member_accuracies"]))
        for name, numbers in result["extra_tests"].items():
            print(f"  {name} test set: ensemble accuracy {numbers['ensemble_accuracy']:.2%} (error "
                  f"{numbers['ensemble_error_percent']:.2f}%); members: "
                  + ", ".join(f"{value:.2%}" for value in numbers["member_accuracies"]))
        if target is not None:
            write_json_atomic(target, result)
            print(f"  wrote {target}")
    return 0
