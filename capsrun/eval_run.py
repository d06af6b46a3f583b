"""`capsrun eval run_dir=PATH`: measures trained runs on the test set, alone and as an ensemble.

Per run, into its folder: eval.json (the numbers), eval_predictions.csv (every test digit's
label, prediction and capsule lengths), confusion_matrix.png, misclassified.png, and test/*
in its TensorBoard. Several runs are also combined into an ensemble that averages their
capsule lengths (the paper's CIFAR-10 result is an ensemble of 7 models).
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


def evaluate_run(run_dir, cfg, strategy):
    """Evaluates one run on its test split under `strategy`.

    Returns (report, outputs): report = the JSON-ready dict of eval.json; outputs = dict of
    numpy arrays `labels` int [N], `lengths` float32 [N, J], `predictions` int [N], `images`
    uint8 [N, H, W, C].
    """
    from capsrun.distribute import check_batch_size, use_jit
    from capsrun.evaluation import Evaluator

    restored = restore_run(run_dir, cfg.checkpoint, cfg.data.test_size, device_overrides(cfg), strategy)
    run_cfg, test = restored.cfg, restored.splits.test
    batch_size = cfg.batch_size or run_cfg.trainer.eval_batch_size or run_cfg.batch_size
    check_batch_size(batch_size, strategy)
    say(f"capsrun eval: {run_dir}: {len(test):,} test digits, checkpoint {restored.checkpoint}, "
        f"{strategy.num_replicas_in_sync} replica(s)")
    evaluator = Evaluator(restored.model, run_cfg.loss, strategy, batch_size, jit_compile=use_jit(run_cfg.trainer))
    metrics = evaluator.run(test, keep_outputs=True)
    confusion = metrics["confusion_matrix"]
    count, correct = int(confusion.sum()), int(np.trace(confusion))
    per_class = confusion.sum(axis=1)
    report = {
        "run_dir": str(run_dir),
        "checkpoint": restored.checkpoint,
        "step": restored.step,
        "num_examples": count,
        "test_accuracy": correct / count,
        "test_error_percent": 100.0 * (count - correct) / count,
        "num_misclassified": count - correct,
        "per_class_accuracy": [None if total == 0 else float(confusion[k, k]) / float(total)
                               for k, total in enumerate(per_class)],
        "per_class_count": [int(total) for total in per_class],
        "confusion_matrix": confusion.tolist(),
        "reconstruction_error": metrics.get("reconstruction_error"),  # None for a model without decoder
        **{key: value for key, value in metrics.items() if key.endswith("loss")},  # loss and its terms
        "test_size": run_cfg.data.test_size,
        "batch_size": batch_size,
        "replicas": strategy.num_replicas_in_sync,
    }
    outputs = {"labels": test.labels, "lengths": metrics["lengths"], "predictions": metrics["predictions"],
               "images": test.images}
    return report, outputs


def predictions_csv(outputs):
    """index,label,predicted,confidence,runner_up,length_0..length_{J-1}: one row per test digit."""
    lengths = outputs["lengths"]
    order = np.argsort(-lengths, axis=1, kind="stable")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["index", "label", "predicted", "confidence", "runner_up",
                     *[f"length_{k}" for k in range(lengths.shape[1])]])
    for index, (label, row, ranked) in enumerate(zip(outputs["labels"], lengths, order, strict=True)):
        writer.writerow([index, int(label), int(ranked[0]), f"{row[ranked[0]]:.6f}", int(ranked[1]),
                         *[f"{value:.6f}" for value in row]])
    return text.getvalue().encode()


def run_title(run_dir):
    parts = Path(run_dir).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else str(run_dir)


def make_figures(report, outputs, cfg):
    """{file name: PNG bytes} for confusion_matrix.png and misclassified.png."""
    from capsrun import figures

    title = run_title(report["run_dir"])
    confusion_title = (f"{title}: {report['num_examples'] - report['num_misclassified']:,} of "
                       f"{report['num_examples']:,} test digits correct\n(accuracy "
                       f"{report['test_accuracy']:.2%}, error {report['test_error_percent']:.2f}%)")
    confusion = figures.confusion_matrix_figure(np.asarray(report["confusion_matrix"]), confusion_title)
    wrong = np.flatnonzero(outputs["predictions"] != outputs["labels"])
    shown = wrong[: cfg.max_misclassified]
    lengths = outputs["lengths"]
    grid = figures.misclassified_figure(
        outputs["images"][shown], outputs["labels"][shown], outputs["predictions"][shown],
        lengths[shown, outputs["predictions"][shown]], shown, len(wrong), title,
    )
    return {"confusion_matrix.png": figures.to_png(confusion, cfg.dpi),
            "misclassified.png": figures.to_png(grid, cfg.dpi)}


def write_outputs(report, outputs, cfg):
    """Writes every file of one run (each one atomically) and its TensorBoard summaries."""
    from capsrun.atomic import write_json_atomic

    run_dir = Path(report["run_dir"])
    pngs = make_figures(report, outputs, cfg)
    files = {"eval.json": run_dir / "eval.json", "eval_predictions.csv": run_dir / "eval_predictions.csv",
             **{name: run_dir / name for name in pngs}}
    for name, png in pngs.items():
        write_bytes_atomic(files[name], png)
    write_bytes_atomic(files["eval_predictions.csv"], predictions_csv(outputs))
    write_json_atomic(files["eval.json"], report)
    if cfg.tensorboard:
        scalars = {"test/accuracy": report["test_accuracy"], "test/error_percent": report["test_error_percent"],
                   "test/loss": report["loss"]}
        if report["reconstruction_error"] is not None:
            scalars["test/reconstruction_error"] = report["reconstruction_error"]
        scalars.update({f"test/per_class_accuracy/{k}": value
                        for k, value in enumerate(report["per_class_accuracy"]) if value is not None})
        write_tensorboard(run_dir, report["step"], scalars,
                          {"test/confusion_matrix": pngs["confusion_matrix.png"],
                           "test/misclassified": pngs["misclassified.png"]})
    return files


def format_report(report):
    """The human-readable summary of one run printed on stdout."""
    confusion = np.asarray(report["confusion_matrix"])
    classes = confusion.shape[0]
    width = max(4, len(str(confusion.max())) + 1)
    per_class = "  ".join(f"{k}: {'n/a' if v is None else f'{v:.1%}'}"
                          for k, v in enumerate(report["per_class_accuracy"]))
    lines = [
        f"run {report['run_dir']}",
        f"  checkpoint            {report['checkpoint']} (step {report['step']})",
        f"  test digits           {report['num_examples']:,}",
        f"  test accuracy         {report['test_accuracy']:.2%} (error {report['test_error_percent']:.2f}%, "
        f"{report['num_misclassified']:,} misclassified)",
        f"  reconstruction error  {report['reconstruction_error']:.5f} (mean squared error per pixel)"
        if report["reconstruction_error"] is not None else "  reconstruction error  n/a (the model has no decoder)",
        f"  per-class accuracy    {per_class}",
        "  confusion matrix (rows: true class, columns: predicted class)",
        "      " + "".join(f"{k:>{width}}" for k in range(classes)),
    ]
    lines += [f"  {k:>3} " + "".join(f"{value:>{width}}" for value in row) for k, row in enumerate(confusion)]
    return "\n".join(lines)


def ensemble(reports, outputs):
    """Averages the capsule lengths [N, J] of all runs; the runs must share their test set."""
    labels = outputs[0]["labels"]
    for report, output in zip(reports[1:], outputs[1:], strict=True):
        if len(output["labels"]) != len(labels) or not np.array_equal(output["labels"], labels):
            raise CapsrunError(f"{report['run_dir']} was evaluated on other test digits than {reports[0]['run_dir']}; "
                               "an ensemble needs the same test set (set data.test_size for all)")
    mean_lengths = np.mean([output["lengths"] for output in outputs], axis=0)
    predicted = np.argmax(mean_lengths, axis=-1)
    classes = mean_lengths.shape[1]
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    correct, count = int(np.trace(confusion)), len(labels)
    members = [report["test_accuracy"] for report in reports]
    return {
        "runs": [report["run_dir"] for report in reports],
        "checkpoints": [report["checkpoint"] for report in reports],
        "num_examples": count,
        "ensemble_accuracy": correct / count,
        "ensemble_error_percent": 100.0 * (count - correct) / count,
        "member_accuracies": members,
        "mean_member_accuracy": float(np.mean(members)),
        "best_member_accuracy": float(np.max(members)),
        "confusion_matrix": confusion.tolist(),
    }


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
    reports, all_outputs = [], []
    for run in runs:
        report, outputs = evaluate_run(run, cfg, strategy)
        write_outputs(report, outputs, cfg)
        print(format_report(report))
        print(f"  wrote {run / 'eval.json'}, eval_predictions.csv, confusion_matrix.png, misclassified.png", flush=True)
        reports.append(report)
        all_outputs.append({key: value for key, value in outputs.items() if key != "images"})
    if len(runs) > 1:
        from capsrun.atomic import write_json_atomic

        result = ensemble(reports, all_outputs)
        print(f"ensemble of {len(runs)} runs (mean capsule lengths): test accuracy {result['ensemble_accuracy']:.2%} "
              f"(error {result['ensemble_error_percent']:.2f}%); members: "
              + ", ".join(f"{value:.2%}" for value in result["member_accuracies"]))
        if target is not None:
            write_json_atomic(target, result)
            print(f"  wrote {target}")
    return 0
