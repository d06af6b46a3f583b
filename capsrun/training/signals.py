"""SIGTERM/SIGINT as a flag that a training loop polls, so that a stop request ends a run after a
whole step, with a checkpoint, instead of killing it mid-step."""
import signal
from types import FrameType
from typing import Optional


class StopRequested:
    """Turns SIGTERM/SIGINT into a flag while the `with` block runs. `signal_name` is set here
    when this process gets the signal; the flag rides along with the next step's reduced metrics,
    and `agreed` is set when any replica of any worker raised it, so that all workers stop after
    the same step."""

    def __init__(self) -> None:
        self.signal_name: Optional[str] = None
        self.agreed = False

    def __enter__(self) -> "StopRequested":
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
