"""Training: `train(cfg, run_dir)` builds everything from the config and runs the Trainer.

The Trainer follows TF Model Garden's orbit pattern: `train_loop_begin` (an epoch's data),
`train_step` (one compiled, distributed step), `train_loop_end` (validation, summaries,
checkpoints). The strategy is the one whose scope the Trainer is created under. The Trainer never
prints or exits: a stop request raises TrainingInterrupted, a non-finite loss TrainingDiverged,
bad input CapsrunError; the `train` command maps them to exit codes 3, 4 and 2.

Shapes: B global batch, b one replica's share of it, H, W, C image, T objects per image.
"""
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from capsrun.config.validation import validate
from capsrun.data import pipeline
from capsrun.data.splits import DataSplits, load_splits
from capsrun.errors import CapsrunError, TrainingDiverged, TrainingInterrupted
from capsrun.logs import quiet_tensorflow
from capsrun.models.base import InputSpec
from capsrun.models.cost import model_cost
from capsrun.models.registry import build_model
from capsrun.numbers import percent
from capsrun.training.checkpoints import RunCheckpoints, TrainingProgress, latest_checkpoint
from capsrun.training.clock import TrainingClock
from capsrun.training.distribute import check_batch_size, is_chief, make_strategy, setup_devices, use_jit
from capsrun.training.evaluator import Evaluator
from capsrun.training.history import RunHistory, first_reaching
from capsrun.training.profiling import StepProfiler
from capsrun.training.progress import ProgressLog
from capsrun.training.run_folder import PathLike, check_writable, session_folder
from capsrun.training.schedules import learning_rate_schedule
from capsrun.training.signals import StopRequested
from capsrun.training.steps import SumMeter, batch_sums
from capsrun.training.summaries import (
    RunWriters,
    truncate_events,
    write_final_metrics,
    write_hparams,
    write_reconstructions,
    write_scalars,
)

log = logging.getLogger(__name__)

TARGET_KEYS = ("time_to_target_seconds", "steps_to_target", "epochs_to_target")
"""The time-to-accuracy fields of metrics.json, also written as result/<name> at the step where
validation first reached trainer.target_val_accuracy."""



def make_optimizer(opt_cfg: Any, steps_per_epoch: int, mixed_precision: str) -> keras.optimizers.Optimizer:
    """Adam with the learning-rate schedule of capsrun.training.schedules (by default
    lr * decay_rate ** epoch, staircase per epoch)."""
    schedule = learning_rate_schedule(opt_cfg, steps_per_epoch)
    optimizer = keras.optimizers.Adam(learning_rate=schedule, epsilon=opt_cfg.epsilon)
    if mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def crossed(step: int, ran: int, every: Optional[int]) -> bool:
    """True when the `ran` steps that ended at global step `step` include a multiple of `every`
    (null: never): logging and checkpoints every N steps keep their cadence when a loop runs
    several steps at once (with steps_per_loop = 1, exactly `step % every == 0`)."""
    return bool(every) and step // every > (step - ran) // every


def _loss_and_accuracy(meter: SumMeter) -> Dict[str, float]:
    """The running mean loss and accuracy of a meter, for progress output."""
    means = meter.means()
    return {"loss": means["loss"], "accuracy": means["accuracy"]}


class Trainer:
    """Runs the epochs of one run in `run_dir`; `fit()` returns the final metrics dict.

    Create it under the scope of nothing: the model and optimizer are created under
    `strategy.scope()` here.
    """

    def __init__(self, cfg: DictConfig, run_dir: PathLike, strategy: tf.distribute.Strategy, splits: DataSplits,
                 hparams: Optional[dict] = None):
        self.cfg, self.run_dir, self.strategy, self.splits = cfg, Path(run_dir), strategy, splits
        self.hparams = hparams or {}  # write_hparams' `swept` and `choices` (from a sweep's Hydra job)
        self.batch_size = cfg.batch_size
        self.steps_per_epoch = pipeline.steps_per_epoch(splits.train, cfg.batch_size)
        jit = use_jit(cfg.trainer)
        spec = InputSpec(splits.image_shape, splits.num_classes, splits.num_targets)
        with strategy.scope():
            self.model = build_model(cfg.model, cfg.loss, spec)
            self.optimizer = make_optimizer(cfg.optimizer, self.steps_per_epoch, cfg.trainer.mixed_precision)
            # Keras 3 optimizers must create their slots eagerly under a strategy (keras#23085).
            self.optimizer.build(self.model.trainable_variables)
            self.progress = TrainingProgress()
        self.clock = TrainingClock()
        self.checkpoints = RunCheckpoints(
            run_dir, self.model, self.optimizer, self.progress, cfg.trainer.keep_checkpoints, clock=self.clock)
        self.evaluator = Evaluator(self.model, strategy, cfg.trainer.eval_batch_size or cfg.batch_size,
                                   jit_compile=jit, log_every_steps=cfg.trainer.log_every_steps)
        self.writer = RunWriters(self.run_dir)  # the run's own TensorBoard run and one per phase
        self.history = RunHistory(self.run_dir, static=model_cost(self.model))
        replica_step = tf.function(self._replica_step, jit_compile=jit, reduce_retracing=True)
        self._distributed_step = lambda batch, stop: self._reduce(strategy.run(replica_step, args=(batch, stop)))
        self._step = tf.function(self._distributed_step, reduce_retracing=True)
        self._loop = tf.function(self._loop_steps, reduce_retracing=True)
        self.resumed_from: Optional[str] = None
        self._latest: Optional[dict] = None  # the last metrics.json written
        self._last_val: Optional[Dict[str, Any]] = None  # the last validation's metrics
        self._new_best = False  # the last validation was the best so far and checkpoints/best is not saved yet
        self.profiler = StepProfiler(cfg.trainer.profile_steps, session_folder(self.run_dir))

    # -- one step -------------------------------------------------------------------------------

    def train_step(self, batch: tuple, stop: tf.Tensor) -> Dict[str, tf.Tensor]:
        """One compiled step on a distributed global batch (uint8 images [B, H, W, C], int32 labels
        [B] or [B, T][, uint8 components [B, T, H, W, C]]); `stop` float32 scalar, 1 where this
        process received SIGTERM/SIGINT. Returns the sums over the global batch (`batch_sums`),
        plus `non_finite` (> 0 when the loss or gradients were not finite) and `stop` (> 0 when
        any replica of any worker asked to stop)."""
        return self._step(batch, stop)

    def train_steps(self, iterator: Any, steps: int, stop: tf.Tensor) -> Dict[str, tf.Tensor]:
        """`steps` training steps on the next global batches of `iterator` (an iterator over the
        distributed dataset), in one compiled function when steps > 1: the sums of `train_step`
        added over the steps on the device, plus `steps` (float32, how many ran: fewer when a
        step was not finite, which ends the loop). The host reads the results once per loop:
        one host sync and one Python round-trip per `trainer.steps_per_loop` steps instead of per
        step, which matters for small models and on GPUs. `stop` applies to every step."""
        if steps == 1:
            return {**self.train_step(next(iterator), stop), "steps": tf.constant(1.0)}
        return self._loop(iterator, tf.constant(steps, tf.int32), stop)

    def _loop_steps(self, iterator: Any, steps: tf.Tensor, stop: tf.Tensor) -> Dict[str, tf.Tensor]:
        """The body of `train_steps` (traced once): steps int32 scalar >= 2."""
        sums = {**self._distributed_step(next(iterator), stop), "steps": tf.constant(1.0)}
        # A diverged step ends the loop, so that its weights are not stepped further. The test is
        # the loop's condition, not a `break` in its body: a conditional around the replicated
        # step fails under MirroredStrategy (a placeholder of the branch left unfed).
        while sums["steps"] < tf.cast(steps, tf.float32) and sums["non_finite"] <= 0:
            out = self._distributed_step(next(iterator), stop)
            sums = {key: value + (out[key] if key != "steps" else 1.0) for key, value in sums.items()}
        return sums

    def _replica_step(self, batch: tuple, stop: tf.Tensor) -> Dict[str, tf.Tensor]:
        """One replica's share b of a global batch.

        Losses are summed over the replica's examples and divided by the GLOBAL batch size, so
        that the gradients the optimizer sums over replicas equal those of the whole batch on one
        device. Under mixed_float16 the loss is multiplied by the dynamic loss scale before the
        gradient and the optimizer (a LossScaleOptimizer) divides the gradients by it again. The
        stop flags are summed with the metrics, so that every worker stops after the same step.
        """
        images, labels, components = pipeline.unpack(batch)
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            outputs = self.model(images, labels=labels, training=True)
            sums = batch_sums(self.model, outputs, images, labels, components)
            loss = sums["loss"] / self.batch_size
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, variables)
        if self.cfg.trainer.max_grad_norm:
            gradients = self._clip_global(gradients)
        grad_norm = tf.linalg.global_norm(gradients)
        self.optimizer.apply_gradients(zip(gradients, variables))
        finite = tf.math.is_finite(loss)
        if self.cfg.trainer.mixed_precision != "mixed_float16":
            finite = tf.logical_and(finite, tf.math.is_finite(grad_norm))
        return {**sums, "non_finite": 1.0 - tf.cast(finite, tf.float32), "stop": tf.identity(stop)}

    def _clip_global(self, gradients: List[tf.Tensor]) -> List[tf.Tensor]:
        """Clips the gradient of the whole global batch to `trainer.max_grad_norm`. The replicas'
        gradients are summed first (the exact global norm), then divided by the replica count
        because the optimizer sums them over replicas once more."""
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync
        if replicas > 1:
            gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
        gradients, _ = tf.clip_by_global_norm(gradients, self.cfg.trainer.max_grad_norm)
        return [g / replicas for g in gradients] if replicas > 1 else gradients

    def _reduce(self, per_replica: Dict[str, Any]) -> Dict[str, tf.Tensor]:
        return {key: self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                for key, value in per_replica.items()}

    # -- restoring ------------------------------------------------------------------------------

    def restore_if_any(self, source_dir: PathLike, must_exist: bool = False) -> Optional[str]:
        """Continues from the latest checkpoint of the run folder `source_dir` (model, optimizer,
        progress and the epoch history of metrics.json); `must_exist` makes a missing checkpoint
        an error. Every worker of a cluster restores the chief's checkpoint."""
        source_dir = Path(source_dir)
        path = latest_checkpoint(source_dir, "last")
        if path is None:
            if must_exist:
                raise CapsrunError(f"{source_dir} has no checkpoint in checkpoints/last; nothing to resume")
            return None
        self.checkpoints.restore(path)
        self.resumed_from = path
        truncate_events(self.run_dir, self.global_step)
        self.history.load(source_dir, self.epochs_done, self.global_step)
        log.info("resumed from %s (epoch %d, step %d)", path, self.epochs_done, self.global_step)
        return path

    @property
    def global_step(self) -> int:
        return int(self.optimizer.iterations.numpy())

    @property
    def epochs_done(self) -> int:
        return int(self.progress.epoch.numpy())

    # -- the loops ------------------------------------------------------------------------------

    def fit(self) -> dict:
        """Trains the remaining epochs; returns the final metrics (also in metrics.json)."""
        if self.resumed_from is None:
            write_hparams(self.writer, self.cfg, trial_id=self.run_dir.name, **self.hparams)
        if self.epochs_done >= self.cfg.epochs or self._stop_reached():
            log.info("training is already done (%d epochs, or trainer.stop_at_val_accuracy reached); raise "
                     "`epochs` or trainer.stop_at_val_accuracy to train longer", self.epochs_done)
            return self.history.read() or {"status": "completed", "epochs_completed": self.epochs_done}
        metrics = {"status": "running", "epochs_completed": self.epochs_done}
        with StopRequested() as stop, self.profiler:
            for epoch in range(self.epochs_done, self.cfg.epochs):
                dataset, report = self.train_loop_begin(epoch)
                epoch_metrics = self.train_loop(dataset, report, stop)
                if stop.agreed:
                    self._interrupted(metrics, stop.signal_name or "a stop request from another worker")
                metrics = self.train_loop_end(epoch, epoch_metrics)
                if self._stop_reached():
                    metrics["stopped_at_step"] = self.global_step
                    log.info("validation accuracy reached trainer.stop_at_val_accuracy=%s at step %d; stopping",
                             self.cfg.trainer.stop_at_val_accuracy, self.global_step)
                    break
        metrics["status"] = "completed"
        self._write_metrics(metrics)
        write_final_metrics(self.writer, self._latest)
        self.writer.flush()
        return self._latest

    def train_loop_begin(self, epoch: int) -> tuple:
        """(the distributed dataset of one epoch minus the batches a resumed run already did,
        a function `report(steps done in the epoch, SumMeter)` that shows the progress, or None)."""
        skip = int(self.progress.step_in_epoch.numpy())
        dataset = pipeline.train_dataset(
            self.splits.train, self.batch_size, self.cfg.seed, epoch, self.cfg.data.shift_pixels, skip
        )
        return self.strategy.experimental_distribute_dataset(dataset), self._progress(epoch, skip)

    def _progress(self, epoch: int, skip: int) -> Optional[Callable[[int, SumMeter], None]]:
        """A progress bar on a terminal (trainer.progress_bar), else log lines (SLURM, nohup)."""
        if sys.stdout.isatty():
            if not self.cfg.trainer.progress_bar:
                return None
            bar = keras.utils.Progbar(self.steps_per_epoch, stateful_metrics=["loss", "accuracy", "img/s"],
                                      unit_name="step")
            if skip:
                bar.update(skip)
            return lambda done, meter: bar.update(done, [
                *_loss_and_accuracy(meter).items(), ("img/s", meter.images_per_second())])
        lines = ProgressLog(f"epoch {epoch + 1}/{self.cfg.epochs}", self.steps_per_epoch,
                            self.cfg.trainer.log_every_steps, start=skip, logger=log)
        # the means are computed only when a line is due, not on every step
        return lambda done, meter: lines.update(done, meter.examples, lambda: _loss_and_accuracy(meter))

    def train_loop(self, dataset: Any, report: Optional[Callable[[int, SumMeter], None]], stop: StopRequested) -> dict:
        """Runs the steps of one epoch; returns the epoch's training metrics (mean loss terms,
        accuracy, images_per_second, seconds)."""
        epoch, interval = SumMeter(), SumMeter()
        iterator = iter(dataset)
        remaining = self.steps_per_epoch - int(self.progress.step_in_epoch.numpy())  # batches of the epoch left
        while remaining > 0:
            count = min(self.cfg.trainer.steps_per_loop, remaining)
            stop_flag = tf.constant(1.0 if stop.signal_name else 0.0)
            self.profiler.before(self.global_step + 1)
            sums = self.clock.timed((self._step, self._loop), lambda count=count, stop_flag=stop_flag: {
                key: float(value) for key, value in self.train_steps(iterator, count, stop_flag).items()})
            step, ran = self.global_step, int(sums.pop("steps"))
            self.profiler.after(step)
            if sums.pop("non_finite") > 0:
                self._diverged(step)
            stop.agreed = sums.pop("stop") > 0
            self.progress.step_in_epoch.assign_add(ran)
            remaining -= ran
            epoch.add(sums, ran * self.batch_size)
            interval.add(sums, ran * self.batch_size)
            if crossed(step, ran, self.cfg.trainer.log_every_steps):
                self._log_train(step, interval)
                interval.reset()
            if report:
                report(int(self.progress.step_in_epoch.numpy()), epoch)
            if crossed(step, ran, self.cfg.trainer.checkpoint_every_steps):
                self.checkpoints.save_last(step)
            if stop.agreed:
                break
            if remaining > 0 and crossed(step, ran, self.cfg.trainer.val_every_steps) and len(self.splits.val):
                self._validate(step)  # the epoch's last step is validated by train_loop_end
                self._write_metrics(self._latest)
                if self._stop_reached():
                    break
        if interval.examples and not stop.agreed:  # the steps since the last log line, so that the end of
            self._log_train(self.global_step, interval)  # each epoch (and a run shorter than N) is logged
        metrics = {"loss": float("nan"), **epoch.means()}
        metrics.update(images_per_second=epoch.images_per_second(), seconds=epoch.seconds())
        return metrics

    def _log_train(self, step: int, interval: SumMeter) -> None:
        values = interval.means()
        values["learning_rate"] = float(tf.convert_to_tensor(self.optimizer.learning_rate).numpy())
        values["images_per_second"] = interval.images_per_second()
        write_scalars(self.writer, "train", values, step)

    def train_loop_end(self, epoch: int, train_metrics: dict) -> dict:
        """Validation (unless the epoch stopped at trainer.stop_at_val_accuracy, just validated),
        summaries, metrics.json and checkpoints after an epoch; returns metrics. metrics.json is
        written before the checkpoint: a run killed between the two resumes from the previous
        checkpoint and drops this epoch's record again."""
        step = self.global_step
        partial = self._stop_reached()  # train_loop stopped inside the epoch
        val = None if partial else self._validate(step, best_checkpoint=False)
        if partial:
            val = self._last_val
        else:
            self.progress.epoch.assign(epoch + 1)
            self.progress.step_in_epoch.assign(0)
        if val is not None and not partial:
            count = min(self.cfg.trainer.num_recon_images, len(self.splits.val))
            inputs = pipeline.model_inputs(self.splits.val, np.arange(count))
            write_reconstructions(self.writer, self.model, inputs, step)
        self.history.add_epoch(epoch + 1, step, train_metrics, val)
        if partial:  # not counted in epochs_completed
            self.history.records[-1]["partial"] = True
        best = float(self.progress.best_val_accuracy.numpy())
        metrics = self.history.summary("running", self.epochs_done, step, best if best >= 0 else None,
                                       train_metrics, val)
        self._write_metrics(metrics)
        self.checkpoints.save_last(step)
        if self._new_best:
            self.checkpoints.save_best(step)
        self.writer.flush()
        log.info(
            "epoch %d/%d: loss %.4f, train accuracy %s, val accuracy %s, %.0f images/s, %.0f s",
            epoch + 1, self.cfg.epochs, train_metrics["loss"], percent(train_metrics["accuracy"]),
            percent(None if val is None else val["accuracy"]), train_metrics["images_per_second"],
            train_metrics["seconds"],
        )
        return metrics

    # -- validation and time to accuracy --------------------------------------------------------

    def _validate(self, step: int, best_checkpoint: bool = True) -> Optional[Dict[str, Any]]:
        """Validates the model at global step `step` (None without validation data): the pass
        counts on the training clock, its accuracy joins the run's validations, the val/*
        scalars are written, and the first validation that reaches trainer.target_val_accuracy
        writes result/time_to_target_seconds, steps_to_target and epochs_to_target at `step`. A
        new best accuracy is saved to checkpoints/best at once with `best_checkpoint`, else
        `_new_best` tells the caller to save it."""
        self._new_best = False
        if not len(self.splits.val):
            return None
        val = self.evaluator.run(self.splits.val, progress=None if sys.stdout.isatty() else "validation")
        self.clock.add(self.evaluator.seconds - self.evaluator.compile_seconds, traced=False)
        self.clock.add(self.evaluator.compile_seconds, traced=True)
        target = self.cfg.trainer.target_val_accuracy
        reached_before = target is not None and first_reaching(self.history.validations, target) is not None
        self.history.add_validation(step, step / self.steps_per_epoch, self.clock.seconds, val)
        write_scalars(self.writer, "val", {k: v for k, v in val.items() if k == "accuracy" or k.endswith("loss")},
                      step)
        if target is not None and not reached_before and val["accuracy"] >= target:
            timing = self._timing()
            with self.writer.session.as_default(step=step):
                for name in TARGET_KEYS:
                    tf.summary.scalar(f"result/{name}", timing[name])
            log.info("validation accuracy %s reached trainer.target_val_accuracy=%s after %.1f s of training "
                     "(%d steps, %.2f epochs)", percent(val["accuracy"]), target, *(timing[k] for k in TARGET_KEYS))
        if val["accuracy"] > float(self.progress.best_val_accuracy.numpy()):
            self.progress.best_val_accuracy.assign(val["accuracy"])
            self._new_best = True
            if best_checkpoint:
                self.checkpoints.save_best(step)
                self._new_best = False
        self._last_val = val
        if self._latest is not None:  # the summary written after a mid-epoch validation
            self._latest = {**self._latest, "global_step": step, "val_loss": val["loss"],
                            "val_accuracy": val["accuracy"],
                            "best_val_accuracy": float(self.progress.best_val_accuracy.numpy())}
        self.writer.flush()
        return val

    def _stop_reached(self) -> bool:
        """Whether the best validation accuracy so far has reached trainer.stop_at_val_accuracy."""
        stop_at = self.cfg.trainer.stop_at_val_accuracy
        return stop_at is not None and float(self.progress.best_val_accuracy.numpy()) >= stop_at

    def _timing(self) -> Dict[str, Any]:
        """The clock's fields of metrics.json: training_seconds, compile_seconds, target_val_accuracy
        and, once validation has reached it, time_to_target_seconds, steps_to_target and
        epochs_to_target (else None)."""
        target = self.cfg.trainer.target_val_accuracy
        first = None if target is None else first_reaching(self.history.validations, target)
        return {
            "training_seconds": self.clock.seconds,
            "compile_seconds": float(self.clock.compile_seconds.numpy()),
            "target_val_accuracy": target,
            "time_to_target_seconds": None if first is None else first["seconds"],
            "steps_to_target": None if first is None else first["step"],
            "epochs_to_target": None if first is None else first["epoch"],
        }

    def _write_metrics(self, metrics: Optional[dict]) -> None:
        """Writes metrics.json: `metrics` with the clock's fields (and the run's validations)."""
        if metrics is None:  # a mid-epoch validation in the first epoch: the history has no summary yet
            metrics = {"status": "running", "epochs_completed": self.epochs_done, "global_step": self.global_step,
                       "best_val_accuracy": float(self.progress.best_val_accuracy.numpy()),
                       "history": self.history.records}
        self._latest = {**metrics, **self._timing(), "validations": self.history.validations,
                        "history": self.history.records}
        self.history.write(self._latest)

    # -- ending early ---------------------------------------------------------------------------

    def _interrupted(self, metrics: dict, signal_name: str) -> None:
        step = self.global_step
        path = self.checkpoints.save_last(step)
        self.writer.flush()
        self._write_metrics({**metrics, "status": "interrupted", "global_step": step})
        raise TrainingInterrupted(str(self.run_dir), path, step, signal_name)

    def _diverged(self, step: int) -> None:
        self.writer.flush()
        self._write_metrics({"status": "diverged", "global_step": step, "epochs_completed": self.epochs_done,
                             "history": self.history.records})
        raise TrainingDiverged(str(self.run_dir), step)


def train(cfg: DictConfig, run_dir: PathLike, hparams: Optional[dict] = None) -> dict:
    """Trains the model configured by `cfg` in `run_dir`; returns the final metrics dict.
    `hparams` ({"swept": keys, "choices": {group: choice}}) shapes the HParams record.

    Raises CapsrunError (bad input), TrainingInterrupted (SIGTERM/SIGINT, checkpoint written) or
    TrainingDiverged (non-finite loss). In a multi-worker cluster only the chief writes into
    `run_dir`; the other workers write their (collectively required) checkpoints and summaries to
    a temporary folder removed at the end.
    """
    quiet_tensorflow()
    validate(cfg)
    check_writable(run_dir)
    setup_devices(cfg.trainer, cfg.seed)
    strategy = make_strategy(cfg.trainer)
    check_batch_size(cfg.batch_size, strategy)
    splits = load_splits(cfg.data, cfg.seed, extra_tests=False)  # training never uses the extra test sets
    if len(splits.train) < cfg.batch_size:
        raise CapsrunError(
            f"only {len(splits.train)} training images for batch_size={cfg.batch_size}; "
            "lower batch_size or raise data.train_size"
        )
    chief = is_chief(strategy)
    output_dir = run_dir if chief else tempfile.mkdtemp(prefix="capsrun-worker-")
    try:
        trainer = Trainer(cfg, output_dir, strategy, splits, hparams)
        trainer.restore_if_any(run_dir, must_exist=cfg.resume is not None)
        log.info("training a %s-parameter %s on %d images (%d validation) with %d replica(s), %d steps per epoch",
                 f"{trainer.model.count_params():,}", cfg.model.name, len(splits.train), len(splits.val),
                 strategy.num_replicas_in_sync, trainer.steps_per_epoch)
        metrics = trainer.fit()
    finally:
        if not chief:
            shutil.rmtree(output_dir, ignore_errors=True)
    log.info("done: best validation accuracy %s; run folder %s", percent(metrics.get("best_val_accuracy")), run_dir)
    return metrics
