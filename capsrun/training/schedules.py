"""The learning-rate schedule of `capsrun train` (the `optimizer` config group).

    lr(step) = max(lr_0 * decay_rate ** (step / decay_steps), min_lr)

with step / decay_steps rounded down when `staircase`. The paper's setting in capsrun (today's
default, `convention=paper`): decay_steps = one epoch, staircase, no floor, i.e. x0.96 per epoch.
The official code (`convention=official`; research/capsules/models/model.py): decay_steps 2000,
continuous (tf.train.exponential_decay's staircase=False), floored at 1e-6 by tf.maximum. After
50 epochs of 429 steps (21,450 steps at batch 128): 1e-3 * 0.96 ** 10.725 = 6.45e-4 against the
per-epoch schedule's 1e-3 * 0.96 ** 50 = 1.30e-4.

The step is the optimizer's own iteration count, so a restored optimizer resumes the schedule
where it stopped.
"""
import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="capsrun")
class FlooredExponentialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr_0 * decay_rate ** (step / decay_steps), floored at `min_lr` (see the module docstring)."""

    def __init__(self, initial_learning_rate: float, decay_steps: int, decay_rate: float,
                 staircase: bool = True, min_lr: float = 0.0):
        self.initial_learning_rate, self.decay_steps = float(initial_learning_rate), int(decay_steps)
        self.decay_rate, self.staircase, self.min_lr = float(decay_rate), bool(staircase), float(min_lr)

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        exponent = tf.cast(step, tf.float32) / float(self.decay_steps)
        if self.staircase:
            exponent = tf.floor(exponent)
        rate = self.initial_learning_rate * tf.pow(tf.constant(self.decay_rate, tf.float32), exponent)
        return tf.maximum(rate, self.min_lr)

    def get_config(self) -> dict:
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase, "min_lr": self.min_lr}


def learning_rate_schedule(opt_cfg, steps_per_epoch: int) -> FlooredExponentialDecay:
    """The schedule of the `optimizer` config group (lr, decay_rate, decay_steps: null = one
    epoch of `steps_per_epoch` steps, staircase, min_lr; keys absent in older runs' configs take
    the paper's values)."""
    decay_steps = opt_cfg.get("decay_steps") or max(steps_per_epoch, 1)
    return FlooredExponentialDecay(opt_cfg.lr, decay_steps, opt_cfg.decay_rate,
                                   staircase=opt_cfg.get("staircase", True), min_lr=opt_cfg.get("min_lr", 0.0))
