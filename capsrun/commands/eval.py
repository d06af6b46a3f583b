"""`capsrun eval run_dir=PATH`: measures trained runs on their test sets, alone and as an ensemble.

Per run, into its folder: eval.json (the numbers), eval_predictions.csv (every test image's
label(s), prediction(s) and capsule lengths), misclassified.png, confusion_matrix.png (one label
per image) and test/* in its TensorBoard. eval.json keeps the test split's numbers at the top
level (test_accuracy, test_error_percent, ...); every extra test set of the data (affnist: the
affine set, or the real affNIST test set `affnist` with data.affine.path) is evaluated too, its
numbers under extra_tests[name] with the same keys, its files suffixed `_<name>` and its
TensorBoard tags under test/<name>/. MultiMNIST images count as
correct when their two digits are the two longest capsules; per_class_accuracy is then each
digit's recall. Several runs are also combined into an ensemble that averages their capsule
lengths (the paper's CIFAR-10 result is an ensemble of 7 models).
"""
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig

from capsrun.analysis.metrics import ensemble, format_report
from capsrun.atomic import write_json_atomic
from capsrun.commands.frontend import CommandSpec, check_dpi, check_output_folder, choice, command_config
from capsrun.config.validation import test_size_setting
from capsrun.data.affnist_files import check_path
from capsrun.errors import CapsrunError
from capsrun.numbers import percent, percent_points
from capsrun.training.run_folder import expand_run_dirs, is_run

SPEC = CommandSpec("eval", "run_dir=PATH [key=value ...]",
                   path_keys=frozenset({"run_dir", "checkpoint", "ensemble_file", "data.affine.path"}),
                   list_keys=frozenset({"run_dir"}),
                   required=(("run_dir", "run_dir=PATH (a folder written by capsrun train)"),))


DEVICE_KEYS = ("strategy", "devices", "cpu_devices", "jit_compile")


def check_settings(cfg: DictConfig) -> None:
    if cfg.batch_size is not None and cfg.batch_size < 1:
        raise CapsrunError(f"batch_size must be null or >= 1, got {cfg.batch_size}")
    if cfg.max_misclassified < 0:
        raise CapsrunError(f"max_misclassified must be >= 0, got {cfg.max_misclassified}")
    check_dpi(cfg.dpi)
    test_size_setting(cfg.data.test_size, None)
    if cfg.data.affine.path is not None:
        check_path(cfg.data.affine.path)  # before TensorFlow loads: a wrong path fails at once
    if cfg.trainer.jit_compile is not None:
        choice(cfg.trainer.jit_compile, ("auto", "true", "false"), "trainer.jit_compile")


def device_overrides(cfg: DictConfig) -> Dict[str, Any]:
    """The eval command's trainer.* settings that replace the run's (those not null)."""
    return {key: cfg.trainer[key] for key in DEVICE_KEYS if cfg.trainer[key] is not None}


def ensemble_path(cfg: DictConfig) -> Optional[Path]:
    if cfg.ensemble_file:
        path = Path(cfg.ensemble_file).expanduser()
        if not path.parent.is_dir():
            raise CapsrunError(f"ensemble_file {path}: folder {path.parent} does not exist")
        return path
    items = list(cfg.run_dir) if not isinstance(cfg.run_dir, str) else [cfg.run_dir]
    if len(items) == 1 and not is_run(Path(str(items[0])).expanduser()):
        return Path(str(items[0])).expanduser() / "ensemble_eval.json"
    return None


def eval_command(args: List[str]) -> int:
    cfg = command_config(SPEC, args)
    if cfg is None:
        return 0
    check_settings(cfg)
    runs = expand_run_dirs(cfg.run_dir)
    if len(runs) > 1 and cfg.checkpoint not in ("best", "last"):
        raise CapsrunError("checkpoint=PATH names one checkpoint; with several runs use checkpoint=best or last")
    target = ensemble_path(cfg) if len(runs) > 1 else None
    for run in runs:
        check_output_folder(run)
    from capsrun.analysis import evaluation  # loads TensorFlow: after the checks, so that they stay fast

    devices = device_overrides(cfg)
    strategy = evaluation.make_strategy_for(runs[0], cfg, devices)
    reports, all_sets = [], []
    for run in runs:
        report, sets = evaluation.evaluate_run(run, cfg, strategy, devices)
        written = evaluation.write_outputs(report, sets, cfg)
        print(format_report(report))
        print(f"  wrote {run / written[0]}, {', '.join(written[1:])}", flush=True)
        reports.append(report)
        all_sets.append({name: {key: value for key, value in outputs.items() if key != "images"}
                         for name, outputs in sets.items()})
    if len(runs) > 1:
        result = ensemble(reports, all_sets)
        print(f"ensemble of {len(runs)} runs (mean capsule lengths): "
              f"test accuracy {percent(result['ensemble_accuracy'])} "
              f"(error {percent_points(result['ensemble_error_percent'])}); members: "
              + ", ".join(percent(value) for value in result["member_accuracies"]))
        for name, numbers in result["extra_tests"].items():
            print(f"  {name} test set: ensemble accuracy {percent(numbers['ensemble_accuracy'])} (error "
                  f"{percent_points(numbers['ensemble_error_percent'])}); members: "
                  + ", ".join(percent(value) for value in numbers["member_accuracies"]))
        if target is not None:
            write_json_atomic(target, result)
            print(f"  wrote {target}")
    return 0
