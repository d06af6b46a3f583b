"""Progress lines for logs without a terminal (SLURM, nohup, `| tee`): where the progress bar
cannot draw, a line every `every_steps` steps or every `every_seconds`, whichever comes first,
with the step, the running means, the throughput and the time left."""
import logging
import time
from typing import Callable, Mapping, Optional, Union

from capsrun.numbers import percent

log = logging.getLogger(__name__)

EVERY_SECONDS = 30.0
"""A log line at least this often: a full CPU epoch of the paper's CapsNet is about 15 minutes."""


def format_duration(seconds: float) -> str:
    """1:02:03, 2:03 or 0:07."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class ProgressLog:
    """Logs the progress of `total` steps named `what` (e.g. "epoch 3/50", "validation").

    update(done, examples, values): `done` steps and `examples` examples so far (of this loop,
    counting from the step it started at), `values` the running means to show (loss, accuracy),
    or a function returning them, called only when a line is due (it may wait for the device).
    """

    def __init__(self, what: str, total: int, every_steps: int, every_seconds: float = EVERY_SECONDS,
                 clock: Callable[[], float] = time.monotonic, logger: Optional[logging.Logger] = None,
                 start: int = 0):
        self.what, self.total, self.every_steps, self.every_seconds = what, total, max(every_steps, 1), every_seconds
        self.clock, self.log = clock, logger or log
        self.start_time = self.last_time = clock()
        self.start = self.last_done = start

    def update(self, done: int, examples: int,
               values: Union[Mapping[str, float], Callable[[], Mapping[str, float]]]) -> None:
        now = self.clock()
        due = (done - self.last_done >= self.every_steps or now - self.last_time >= self.every_seconds
               or done >= self.total)
        if not due or done == self.last_done:
            return
        self.last_done, self.last_time = done, now
        elapsed = max(now - self.start_time, 1e-9)
        steps = done - self.start
        parts = [f"{self.what}: step {done}/{self.total}"]
        shown = values() if callable(values) else values
        parts += [f"{name} {percent(value)}" if name == "accuracy" else f"{name} {value:.4f}"
                  for name, value in shown.items()]
        parts.append(f"{examples / elapsed:.0f} img/s")
        if steps > 0 and done < self.total:
            parts.append(f"ETA {format_duration((self.total - done) * elapsed / steps)}")
        self.log.info(", ".join(parts))
