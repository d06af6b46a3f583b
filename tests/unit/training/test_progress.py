"""Progress lines where there is no terminal: every N steps or every 30 s, whichever comes first,
with step/total, loss, accuracy, img/s and ETA; for training, validation and capsrun eval."""
import logging
import re

import tensorflow as tf

from capsrun.data.splits import load_splits
from capsrun.training.progress import ProgressLog, format_duration
from capsrun.training.trainer import Trainer
from tests.conftest import compose_config


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_line_every_n_steps_or_every_30_seconds_whichever_comes_first(caplog):
    clock = Clock()
    lines = ProgressLog("epoch 1/5", total=100, every_steps=10, clock=clock, logger=logging.getLogger("t"))
    with caplog.at_level(logging.INFO, logger="t"):
        for step in range(1, 101):
            clock.now += 1.0 if step <= 50 else 4.0  # 1 s per step, then 4 s per step (slower than 30 s / 10)
            lines.update(step, 128 * step, {"loss": 0.5, "accuracy": 0.9})
    steps = [int(re.search(r"step (\d+)/100", message).group(1)) for message in caplog.messages]
    assert steps[:5] == [10, 20, 30, 40, 50]      # every 10 steps while steps are fast
    assert steps[5:] == [58, 66, 74, 82, 90, 98, 100]  # every 30 s (8 steps of 4 s) once slow, and the last
    assert caplog.messages[0] == "epoch 1/5: step 10/100, loss 0.5000, accuracy 90.00%, 128 img/s, ETA 1:30"
    assert "ETA" not in caplog.messages[-1]


def test_durations():
    assert [format_duration(s) for s in (7, 123, 3723)] == ["0:07", "2:03", "1:02:03"]


def test_training_and_validation_log_progress_without_a_terminal(tmp_path, caplog):
    cfg = compose_config("trainer.log_every_steps=4", "trainer.eval_batch_size=16")  # 8 steps, 4 val batches
    trainer = Trainer(cfg, tmp_path, tf.distribute.get_strategy(), load_splits(cfg.data, cfg.seed))
    with caplog.at_level(logging.INFO, logger="capsrun"):
        trainer.fit()  # pytest captures stdout: not a terminal
    progress = [message for message in caplog.messages if ": step " in message]
    assert [message.split(",")[0] for message in progress] == [
        "epoch 1/1: step 4/8", "epoch 1/1: step 8/8", "validation: step 4/4"]
    assert re.match(r"epoch 1/1: step 4/8, loss \d+\.\d{4}, accuracy \d+\.\d{2}%, \d+ img/s, ETA \d+:\d\d$",
                    progress[0]), progress[0]
