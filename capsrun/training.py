"""Training: `train(cfg, run_dir)` builds everything from the config and runs the Trainer.

The Trainer follows the orbit pattern: train_loop_begin (an epoch's data), train_step
(one compiled, distributed step), train_loop_end (validation, summaries, checkpoints).
The strategy is the one whose scope created the model and optimizer.
"""
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from capsrun import data as data_lib
from capsrun.atomic import write_json_atomic
from capsrun.config import validate
from capsrun.distribute import check_batch_size, is_chief, make_strategy, setup_devices, use_jit
from capsrun.errors import EXIT_DIVERGED, EXIT_INTERRUPTED, CapsrunError
from capsrun.evaluation import NOT_LOSSES, Evaluator, batch_sums, to_unit_range, unpack
from capsrun.model import build_model
from capsrun.runfiles import RunCheckpoints, TrainingProgress, check_writable
from capsrun.summaries import image_grid, truncate_events, write_final_metrics, write_hparams, write_scalars

log = logging.getLogger(__name__)


class StopRequested:
    """Turns SIGTERM/SIGINT into a flag. `signal_name` is set here when this process gets the
    signal; the flag rides along with the next step's reduced metrics, and `agreed` is set when
    any replica of any worker raised it, so that all workers stop after the same step."""

    def __init__(self):
        self.signal_name = None
        self.agreed = False

    def __enter__(self):
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def make_optimizer(opt_cfg, steps_per_epoch, mixed_precision):
    """Adam with lr * decay_rate ** epoch (staircase per epoch, keyed on the optimizer's own
    iteration count, so a restored optimizer resumes the schedule where it stopped)."""
    schedule = keras.optimizers.schedules.ExponentialDecay(
        opt_cfg.lr, decay_steps=max(steps_per_epoch, 1), decay_rate=opt_cfg.decay_rate, staircase=True
    )
    optimizer = keras.optimizers.Adam(learning_rate=schedule, epsilon=opt_cfg.epsilon)
    if mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


class Trainer:
    """Runs the epochs of one run; `fit()` returns the final metrics dict."""

    def __init__(self, cfg, run_dir, strategy, splits):
        self.cfg, self.run_dir, self.strategy, self.splits = cfg, Path(run_dir), strategy, splits
        self.batch_size = cfg.batch_size
        self.steps_per_epoch = data_lib.steps_per_epoch(splits.train, cfg.batch_size)
        jit = use_jit(cfg.trainer)
        with strategy.scope():
            self.model = build_model(cfg.model, splits.image_shape, splits.num_classes, splits.num_targets)
            self.optimizer = make_optimizer(cfg.optimizer, self.steps_per_epoch, cfg.trainer.mixed_precision)
            # Keras 3 optimizers must create their slots eagerly under a strategy (keras#23085).
            self.optimizer.build(self.model.trainable_variables)
            self.progress = TrainingProgress()
        self.checkpoints = RunCheckpoints(
            run_dir, self.model, self.optimizer, self.progress, cfg.trainer.keep_checkpoints)
        self.evaluator = Evaluator(
            self.model, cfg.loss, strategy, cfg.trainer.eval_batch_size or cfg.batch_size, jit_compile=jit
        )
        replica_step = tf.function(self._replica_step, jit_compile=jit, reduce_retracing=True)
        self._train_step = tf.function(
            lambda batch, stop: self._reduce(strategy.run(replica_step, args=(batch, stop))), reduce_retracing=True
        )
        self.history = []
        self.resumed_from = None

    def _replica_step(self, batch, stop):
        """One replica's share of a global batch (uint8 images [b, H, W, C], int32 labels [b] or
        [b, K], and for K digits per image their uint8 components [b, K, H, W, C]);
        `stop` (float32 scalar) is 1 where this process received SIGTERM/SIGINT. The flags are
        summed with the metrics, so that every worker of a cluster stops after the same step.

        Losses are summed over the replica's examples and divided by the GLOBAL batch size, so
        that the gradients the optimizer sums over replicas equal those of the whole batch on one
        device. Under mixed_float16 the loss is multiplied by the dynamic loss scale before the
        gradient and the optimizer (a LossScaleOptimizer) divides the gradients by it again.
        """
        images, labels, components = unpack(batch)
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            outputs = self.model(images, labels=labels, training=True)
            sums = batch_sums(self.model, self.cfg.loss, outputs, images, labels, components)
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

    def _clip_global(self, gradients):
        """Clips the gradient of the whole global batch to `trainer.max_grad_norm`. The replicas'
        gradients are summed first (the exact global norm), then divided by the replica count
        because the optimizer sums them over replicas once more."""
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync
        if replicas > 1:
            gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
        gradients, _ = tf.clip_by_global_norm(gradients, self.cfg.trainer.max_grad_norm)
        return [g / replicas for g in gradients] if replicas > 1 else gradients

    def _reduce(self, per_replica):
        return {key: self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                for key, value in per_replica.items()}

    def restore_if_any(self, source_dir, must_exist=False):
        """Continues from the latest checkpoint of the run folder `source_dir` (model, optimizer,
        progress and the epoch history of metrics.json); `must_exist` makes a missing checkpoint
        an error. Every worker of a cluster restores the chief's checkpoint."""
        source_dir = Path(source_dir)
        path = tf.train.latest_checkpoint(str(source_dir / "checkpoints" / "last"))
        if path is None:
            if must_exist:
                raise CapsrunError(f"{source_dir} has no checkpoint in checkpoints/last; nothing to resume")
            return None
        self.checkpoints.restore(path)
        self.resumed_from = path
        truncate_events(self.run_dir / "tensorboard", int(self.optimizer.iterations.numpy()))
        metrics_file = source_dir / "metrics.json"
        if metrics_file.is_file():
            self.history = [record for record in json.loads(metrics_file.read_text()).get("history", [])
                            if record["epoch"] <= int(self.progress.epoch.numpy())]
        log.info("resumed from %s (epoch %d, step %d)", path, int(self.progress.epoch.numpy()),
                 int(self.optimizer.iterations.numpy()))
        return path

    def fit(self):
        self.writer = tf.summary.create_file_writer(str(self.run_dir / "tensorboard"))
        if self.resumed_from is None:
            write_hparams(self.writer, self.cfg, trial_id=self.run_dir.name)
        if int(self.progress.epoch.numpy()) >= self.cfg.epochs:
            log.info("all %d epochs are already done; raise `epochs` to train longer", self.cfg.epochs)
            metrics_file = self.run_dir / "metrics.json"
            if metrics_file.is_file():
                return json.loads(metrics_file.read_text())
            return {"status": "completed", "epochs_completed": int(self.progress.epoch.numpy())}
        metrics = {"status": "running", "epochs_completed": int(self.progress.epoch.numpy())}
        with StopRequested() as stop:
            for epoch in range(int(self.progress.epoch.numpy()), self.cfg.epochs):
                dataset, progress_bar = self.train_loop_begin(epoch)
                epoch_metrics = self.train_loop(dataset, progress_bar, stop)
                if stop.agreed:
                    self._stop(metrics, stop.signal_name or "a stop request from another worker")
                metrics = self.train_loop_end(epoch, epoch_metrics)
        metrics["status"] = "completed"
        write_json_atomic(self.run_dir / "metrics.json", metrics)
        write_final_metrics(self.writer, metrics)
        self.writer.flush()
        return metrics

    def train_loop_begin(self, epoch):
        """The distributed dataset of one epoch, minus the batches a resumed run already did."""
        skip = int(self.progress.step_in_epoch.numpy())
        dataset = data_lib.train_dataset(
            self.splits.train, self.batch_size, self.cfg.seed, epoch, self.cfg.data.shift_pixels, skip
        )
        show = self.cfg.trainer.progress_bar and sys.stdout.isatty()
        progress_bar = keras.utils.Progbar(
            self.steps_per_epoch, stateful_metrics=["loss", "accuracy", "img/s"], unit_name="step"
        ) if show else None
        if progress_bar and skip:
            progress_bar.update(skip)
        return self.strategy.experimental_distribute_dataset(dataset), progress_bar

    def train_loop(self, dataset, progress_bar, stop):
        """Runs the steps of one epoch; returns the epoch's training metrics."""
        totals, interval = {}, {}
        seen = interval_seen = 0
        epoch_start = interval_start = time.perf_counter()
        for batch in dataset:
            stop_flag = tf.constant(1.0 if stop.signal_name else 0.0)
            sums = {key: float(value) for key, value in self._train_step(batch, stop_flag).items()}
            step = int(self.optimizer.iterations.numpy())
            if sums.pop("non_finite") > 0:
                self._diverged(step)
            stop.agreed = sums.pop("stop") > 0
            self.progress.step_in_epoch.assign_add(1)
            for key, value in sums.items():
                totals[key] = totals.get(key, 0.0) + value
                interval[key] = interval.get(key, 0.0) + value
            seen += self.batch_size
            interval_seen += self.batch_size
            if step % self.cfg.trainer.log_every_steps == 0:
                elapsed = time.perf_counter() - interval_start
                self._log_train(step, interval, interval_seen, interval_seen / elapsed)
                interval = {}
                interval_seen, interval_start = 0, time.perf_counter()
            if progress_bar:
                progress_bar.update(int(self.progress.step_in_epoch.numpy()), [
                    ("loss", totals["loss"] / seen), ("accuracy", totals["correct"] / seen),
                    ("img/s", seen / (time.perf_counter() - epoch_start))])
            every = self.cfg.trainer.checkpoint_every_steps
            if every and step % every == 0:
                self.checkpoints.save_last(step)
            if stop.agreed:
                break
        seconds = time.perf_counter() - epoch_start
        seen = max(seen, 1)
        metrics = {key: value / seen for key, value in totals.items() if key not in NOT_LOSSES}
        metrics.update(accuracy=totals.get("correct", 0.0) / seen, images_per_second=seen / seconds, seconds=seconds)
        metrics.setdefault("loss", float("nan"))
        return metrics

    def _log_train(self, step, sums, count, images_per_second):
        values = {key: value / count for key, value in sums.items() if key not in NOT_LOSSES}
        values["accuracy"] = sums["correct"] / count
        values["learning_rate"] = float(tf.convert_to_tensor(self.optimizer.learning_rate).numpy())
        values["images_per_second"] = images_per_second
        write_scalars(self.writer, "train", values, step)

    def train_loop_end(self, epoch, train_metrics):
        """Validation, summaries, checkpoints and metrics.json after an epoch."""
        step = int(self.optimizer.iterations.numpy())
        val = self.evaluator.run(self.splits.val) if len(self.splits.val) else None
        self.progress.epoch.assign(epoch + 1)
        self.progress.step_in_epoch.assign(0)
        if val is not None:
            write_scalars(self.writer, "val", {k: v for k, v in val.items() if k == "accuracy" or k.endswith("loss")},
                          step)
            self._write_reconstructions(step)
        is_best = val is not None and val["accuracy"] > float(self.progress.best_val_accuracy.numpy())
        if is_best:
            self.progress.best_val_accuracy.assign(val["accuracy"])
        self.checkpoints.save_last(step)
        if is_best:
            self.checkpoints.save_best(step)
        self.writer.flush()
        record = {"epoch": epoch + 1, "step": step, **{f"train_{k}": v for k, v in train_metrics.items()}}
        if val is not None:
            record.update({f"val_{k}": v for k, v in val.items() if k in ("loss", "accuracy", "reconstruction_error")})
        self.history.append(record)
        metrics = self._metrics("running", train_metrics, val)
        write_json_atomic(self.run_dir / "metrics.json", metrics)
        log.info(
            "epoch %d/%d: loss %.4f, train accuracy %.4f, val accuracy %s, %.0f images/s, %.0f s",
            epoch + 1, self.cfg.epochs, train_metrics["loss"], train_metrics["accuracy"],
            "n/a" if val is None else f"{val['accuracy']:.4f}", train_metrics["images_per_second"],
            train_metrics["seconds"],
        )
        return metrics

    def _metrics(self, status, train_metrics, val):
        best = float(self.progress.best_val_accuracy.numpy())
        return {
            "status": status,
            "epochs_completed": int(self.progress.epoch.numpy()),
            "global_step": int(self.optimizer.iterations.numpy()),
            "train_loss": train_metrics["loss"],
            "train_accuracy": train_metrics["accuracy"],
            "val_loss": None if val is None else val["loss"],
            "val_accuracy": None if val is None else val["accuracy"],
            "best_val_accuracy": best if best >= 0 else None,
            "images_per_second": train_metrics["images_per_second"],
            "history": self.history,
        }

    def _write_reconstructions(self, step):
        """The image `val/reconstructions`: validation inputs above their reconstructions from the
        predicted capsule(s), one row per reconstructed digit."""
        count = min(self.cfg.trainer.num_recon_images, len(self.splits.val))
        images = to_unit_range(self.splits.val.images[:count])
        outputs = self.model(images, training=False)
        if "reconstructions" not in outputs:
            return
        reconstructions = outputs["reconstructions"].numpy()
        rows = [reconstructions] if reconstructions.ndim == 4 else list(np.moveaxis(reconstructions, 1, 0))
        with self.writer.as_default(step=step):
            tf.summary.image("val/reconstructions", image_grid([images.numpy(), *rows]))

    def _stop(self, metrics, signal_name):
        step = int(self.optimizer.iterations.numpy())
        path = self.checkpoints.save_last(step)
        self.writer.flush()
        write_json_atomic(self.run_dir / "metrics.json", {**metrics, "status": "interrupted", "global_step": step})
        log.warning("%s received: checkpoint %s written at step %d; continue with: capsrun train resume=%s",
                    signal_name, path, step, self.run_dir)
        raise SystemExit(EXIT_INTERRUPTED)

    def _diverged(self, step):
        self.writer.flush()
        write_json_atomic(self.run_dir / "metrics.json", {
            "status": "diverged", "global_step": step, "epochs_completed": int(self.progress.epoch.numpy()),
            "history": self.history,
        })
        print(f"capsrun train: error: loss or gradients became non-finite at step {step}; the last good "
              f"checkpoint is kept in {self.run_dir / 'checkpoints'}; lower optimizer.lr or set "
              "trainer.max_grad_norm", file=sys.stderr)
        raise SystemExit(EXIT_DIVERGED)


def train(cfg, run_dir):
    """Trains a CapsNet as configured by `cfg`, in `run_dir`; returns the final metrics dict.

    In a multi-worker cluster only the chief writes into `run_dir`; the other workers write their
    (collectively required) checkpoints and summaries to a temporary folder removed at the end.
    """
    for noisy in ("absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    validate(cfg)
    check_writable(run_dir)
    setup_devices(cfg.trainer, cfg.seed)
    strategy = make_strategy(cfg.trainer)
    check_batch_size(cfg.batch_size, strategy)
    splits = data_lib.load_splits(cfg.data, cfg.seed)
    if len(splits.train) < cfg.batch_size:
        raise CapsrunError(
            f"only {len(splits.train)} training images for batch_size={cfg.batch_size}; "
            "lower batch_size or raise data.train_size"
        )
    chief = is_chief(strategy)
    output_dir = run_dir if chief else tempfile.mkdtemp(prefix="capsrun-worker-")
    try:
        trainer = Trainer(cfg, output_dir, strategy, splits)
        trainer.restore_if_any(run_dir, must_exist=cfg.resume is not None)
        log.info("training %s on %d images (%d validation) with %d replica(s), %d steps per epoch",
                 f"{trainer.model.count_params():,}-parameter CapsNet", len(splits.train), len(splits.val),
                 strategy.num_replicas_in_sync, trainer.steps_per_epoch)
        metrics = trainer.fit()
    finally:
        if not chief:
            shutil.rmtree(output_dir, ignore_errors=True)
    log.info("done: best validation accuracy %s; run folder %s", metrics.get("best_val_accuracy"), run_dir)
    return metrics
