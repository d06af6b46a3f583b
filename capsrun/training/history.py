"""A run's `metrics.json`: the per-epoch history and the summary of the run, rewritten atomically
after every epoch (and when a run stops early), so that a crash never leaves half a file."""
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from capsrun.atomic import write_json_atomic
from capsrun.errors import CapsrunError
from capsrun.training.run_folder import METRICS, PathLike

VAL_HISTORY_KEYS = ("loss", "accuracy", "reconstruction_error")
"""Validation numbers kept per epoch in the history."""


class RunHistory:
    """The epochs of one run: `records` (one dict per epoch), `validations` (one dict per
    validation: `step`, `epoch` (fractional: step / steps per epoch), `seconds` on the training
    clock when it ended, `accuracy`, `loss`) and `write(summary)`. `static`: numbers of the run
    that do not change (the model's `parameters` and `macs_per_image`), written into every
    metrics.json before the history."""

    def __init__(self, run_dir: PathLike, static: Optional[Dict[str, Any]] = None):
        self.path = Path(run_dir) / METRICS
        self.records: List[dict] = []
        self.validations: List[dict] = []
        self.static = dict(static or {})

    def load(self, source_dir: PathLike, epochs_done: int, global_step: int) -> None:
        """Continues the history of a run folder: its records of the first `epochs_done` epochs
        and its validations up to `global_step` (those of a killed run's steps after its last
        checkpoint are trained and validated again)."""
        metrics = read_metrics(Path(source_dir) / METRICS)
        if metrics is not None:
            self.records = [record for record in metrics.get("history", []) if record["epoch"] <= epochs_done]
            self.validations = [record for record in metrics.get("validations", []) if record["step"] <= global_step]

    def read(self) -> Optional[dict]:
        """This run's metrics.json, or None when there is none."""
        return read_metrics(self.path)

    def add_epoch(self, epoch: int, step: int, train: Dict[str, float], val: Optional[Dict[str, Any]]) -> None:
        """Records epoch `epoch` (1-based) ending at global step `step`."""
        record = {"epoch": epoch, "step": step, **{f"train_{k}": v for k, v in train.items()}}
        if val is not None:
            record.update({f"val_{k}": v for k, v in val.items() if k in VAL_HISTORY_KEYS})
        self.records.append(record)

    def add_validation(self, step: int, epoch: float, seconds: float, val: Dict[str, Any]) -> None:
        """Records a validation at global step `step`, `seconds` into training."""
        self.validations.append({"step": step, "epoch": epoch, "seconds": seconds,
                                 "accuracy": val["accuracy"], "loss": val["loss"]})

    def summary(self, status: str, epochs: int, step: int, best_val_accuracy: Optional[float],
                train: Dict[str, float], val: Optional[Dict[str, Any]]) -> dict:
        """The metrics.json of a run after its latest epoch."""
        return {
            "status": status,
            "epochs_completed": epochs,
            "global_step": step,
            "train_loss": train["loss"],
            "train_accuracy": train["accuracy"],
            "val_loss": None if val is None else val["loss"],
            "val_accuracy": None if val is None else val["accuracy"],
            "best_val_accuracy": best_val_accuracy,
            "images_per_second": train["images_per_second"],
            "history": self.records,
        }

    def write(self, metrics: dict) -> None:
        """Writes metrics.json: `metrics`, the static numbers, the validations, the epoch history."""
        fields = {key: value for key, value in metrics.items() if key not in ("history", "validations")}
        history = {"history": metrics["history"]} if "history" in metrics else {}
        write_json_atomic(self.path, {**fields, **self.static, "validations": self.validations, **history})


def first_reaching(validations: Sequence[dict], target: float) -> Optional[dict]:
    """The first of a run's `validations` (dicts with `accuracy`, in training order) whose
    accuracy is at least `target`, or None: where time to accuracy is read."""
    return next((record for record in validations if record["accuracy"] >= target), None)


def read_metrics(path: Path) -> Optional[dict]:
    """A metrics.json (None when there is none); a damaged one is a CapsrunError naming it."""
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
        if not isinstance(metrics, dict) or not all(isinstance(record.get("epoch"), int)
                                                    for record in metrics.get("history", [])) \
                or not all(isinstance(record.get("step"), int) for record in metrics.get("validations", [])):
            raise ValueError("not a capsrun metrics file")
    except (OSError, ValueError, AttributeError) as error:
        raise CapsrunError(f"{path} is damaged ({error}); delete it to resume from the checkpoint without "
                           "the epoch history") from None
    return metrics
