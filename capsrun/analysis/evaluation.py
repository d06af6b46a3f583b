"""Evaluating trained runs on their test sets (the engine of `capsrun eval`): the numbers, the
figures, the files of a run folder and its TensorBoard test/* summaries.

`cfg` below is the composed conf/eval.yaml; `devices` the trainer settings that replace a run's.
Outputs of a test set: numpy `labels` int [N] (or [N, T]), `scores` float32 [N, J],
`predictions` int [N] (or [N, T]), `images` uint8 [N, H, W, C].
"""
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
from omegaconf import DictConfig

from capsrun.analysis import figures
from capsrun.analysis.metrics import correct_mask, mean_image_error, predictions_csv, set_report
from capsrun.atomic import write_bytes_atomic, write_json_atomic
from capsrun.models.base import SCORES
from capsrun.numbers import percent, percent_points
from capsrun.training.distribute import check_batch_size, make_strategy, setup_devices, use_jit
from capsrun.training.evaluator import Evaluator
from capsrun.training.restore import load_config, restore_run
from capsrun.training.run_folder import EVAL
from capsrun.training.summaries import write_to_run

log = logging.getLogger(__name__)


CROP_VIEWS = 13
"""data.test_crops=13: the EM paper code's test crops (capsrun.data.pipeline.crop_offsets)."""


def averaged_over_crops(evaluator: Evaluator, split: Any, metrics: Dict[str, Any], num_classes: int) -> Dict[str, Any]:
    """`metrics` of the centre crop (Evaluator.run with kept outputs) with the class scores
    float32 [N, J] averaged over the 13 test crops and the predictions and confusion matrix taken
    from that average (the EM paper code's 13-crop test); the losses stay the centre crop's.
    `centre_crop_accuracy` keeps the accuracy of the centre crop alone."""
    total = metrics[SCORES].astype(np.float64)
    for view in range(1, CROP_VIEWS):
        shifted = replace(split, preprocessing=replace(split.preprocessing, view=view))
        total += evaluator.run(shifted, keep_outputs=True)[SCORES]
    averaged = dict(metrics, centre_crop_accuracy=metrics["accuracy"])
    averaged[SCORES] = (total / CROP_VIEWS).astype(np.float32)
    averaged["predictions"] = evaluator.model.predict_labels(averaged[SCORES]).numpy()
    averaged["accuracy"] = float(np.mean(averaged["predictions"] == split.labels))
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (split.labels, averaged["predictions"]), 1)
    averaged["confusion_matrix"] = confusion
    return averaged


def evaluate_run(run_dir: Path, cfg: DictConfig, strategy: Any, devices: Dict[str, Any]) -> Tuple[dict, dict]:
    """Evaluates one run on its test split and every extra test set (affnist: "affine", or
    "affnist" for the real affNIST files of data.affine.path, the run's or `cfg`'s).

    Returns (report, sets): report = the JSON-ready dict of eval.json (the test split's numbers at
    the top level, each extra set's under extra_tests[name]); sets = {"test" or the extra set's
    name: outputs}, outputs = numpy arrays `labels` int [N] (or [N, K] for K digits per image),
    `lengths` float32 [N, J], `predictions` int [N] (or [N, K]), `images` uint8 [N, H, W, C].
    """
    restored = restore_run(run_dir, cfg.checkpoint, cfg.data.test_size, devices, strategy,
                           multi_digit=True, affine_path=cfg.data.affine.path)
    run_cfg, splits = restored.cfg, restored.splits
    batch_size = cfg.batch_size or run_cfg.trainer.eval_batch_size or run_cfg.batch_size
    check_batch_size(batch_size, strategy)
    extra = "".join(f" + {len(split):,} {name}" for name, split in splits.extra_tests.items())
    log.info(f"capsrun eval: {run_dir}: {len(splits.test):,} test images{extra}, checkpoint {restored.checkpoint}, "
        f"{strategy.num_replicas_in_sync} replica(s)")
    evaluator = Evaluator(restored.model, strategy, batch_size, jit_compile=use_jit(run_cfg.trainer),
                          log_every_steps=run_cfg.trainer.log_every_steps)
    reports, sets = {}, {}
    for name, split in {"test": splits.test, **splits.extra_tests}.items():
        metrics = evaluator.run(split, keep_outputs=True,
                                progress=None if sys.stderr.isatty() else f"capsrun eval: {name} set")
        crops = run_cfg.data.get("test_crops", 1) == CROP_VIEWS and split.preprocessing is not None
        if crops:
            metrics = averaged_over_crops(evaluator, split, metrics, splits.num_classes)
        reports[name] = set_report(metrics, split.labels)
        if crops:
            reports[name].update(test_crops=CROP_VIEWS, centre_crop_accuracy=metrics["centre_crop_accuracy"])
        # the mean-digit bar is in stored pixels; preprocessed inputs (smallNORB's crops) have none
        plain = split.preprocessing is None
        if reports[name]["reconstruction_error"] is not None and splits.num_targets == 1 and plain:
            reports[name]["mean_digit_error"] = mean_image_error(splits.train.images, split.images)
        sets[name] = {"labels": split.labels, SCORES: metrics[SCORES], "predictions": metrics["predictions"],
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


def run_title(run_dir: Path) -> str:
    parts = Path(run_dir).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else str(run_dir)


def set_suffix(name: str) -> Tuple[str, str]:
    """File-name suffix and TensorBoard prefix of a test set: ("", "test") for the test split,
    ("_affine", "test/affine") for the extra set "affine"."""
    return ("", "test") if name == "test" else (f"_{name}", f"test/{name}")


def make_figures(numbers: dict, outputs: Dict[str, np.ndarray], name: str, title: str,
                 cfg: DictConfig) -> Dict[str, bytes]:
    """{figure: PNG bytes} for test set `name` (numbers: its part of eval.json): misclassified,
    and confusion_matrix for one label per image."""
    what = "test images" if name == "test" else f"{name} test images"
    pngs = {}
    if "confusion_matrix" in numbers:
        confusion_title = (f"{title}: {numbers['num_examples'] - numbers['num_misclassified']:,} of "
                           f"{numbers['num_examples']:,} {what} correct\n(accuracy "
                           f"{percent(numbers['test_accuracy'])}, "
                           f"error {percent_points(numbers['test_error_percent'])})")
        pngs["confusion_matrix"] = figures.to_png(
            figures.confusion_matrix_figure(np.asarray(numbers["confusion_matrix"]), confusion_title), cfg.dpi)
    labels, predictions = outputs["labels"], outputs["predictions"]
    wrong = np.flatnonzero(~correct_mask(labels, predictions))
    shown = wrong[: cfg.max_misclassified]
    chosen = predictions[shown].reshape(len(shown), -1)
    confidences = np.take_along_axis(outputs[SCORES][shown], chosen, axis=1).reshape(predictions[shown].shape)
    grid = figures.misclassified_figure(outputs["images"][shown], labels[shown], predictions[shown], confidences,
                                        shown, len(wrong), title if name == "test" else f"{title} ({name} test set)")
    pngs["misclassified"] = figures.to_png(grid, cfg.dpi)
    return pngs


def write_outputs(report: dict, sets: dict, cfg: DictConfig) -> List[str]:
    """Writes every file of one run (each one atomically) and its TensorBoard summaries; returns
    the names of the files written."""
    run_dir = Path(report["run_dir"])
    scalars, images, written = {}, {}, [EVAL]
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
        if "mean_digit_error" in numbers:
            scalars[f"{tag}/mean_digit_error"] = numbers["mean_digit_error"]
        scalars.update({f"{tag}/per_class_accuracy/{k}": value
                        for k, value in enumerate(numbers["per_class_accuracy"]) if value is not None})
    write_json_atomic(run_dir / EVAL, report)
    if cfg.tensorboard:
        write_to_run(run_dir, report["step"], scalars, images)
    return written


def make_strategy_for(run_dir: Path, cfg: DictConfig, devices: Dict[str, Any]) -> Any:
    """Devices and strategy from the first run's trainer settings with the command's overrides."""
    run_cfg = load_config(run_dir, cfg.data.test_size, devices, cfg.data.affine.path)
    setup_devices(run_cfg.trainer, run_cfg.seed)
    return make_strategy(run_cfg.trainer)
