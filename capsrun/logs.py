"""The one place that quietens TensorFlow: its C++ start-up chatter and its Python warnings (e.g.
about unrestored optimizer slots) would bury the one line of an error or a progress message.

TF_CPP_MIN_LOG_LEVEL alone is not enough with TensorFlow 2.21: while `import tensorflow` loads
its libraries, absl prints before it is initialised ("WARNING: All log messages before
absl::InitializeLog() is called are written to STDERR", then the oneDNN, CUDA-stub and CPU
feature lines, twice: measured on the 2-core development machine with every
TF_CPP_MIN_LOG_LEVEL from 0 to 3). Those lines come from C++ straight to file descriptor 2, so
the import itself runs with descriptor 2 pointed at a temporary file, and what it printed is
passed on without those lines. `capsrun --verbose` (or CAPSRUN_VERBOSE=1) leaves all of it alone.
"""
import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

VERBOSE_ENV = "CAPSRUN_VERBOSE"

BANNER = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w.]+:\d+\] "  # absl's prefix: level, date, time, thread, file:line
    r"|To enable the following instructions: )"             # the second line of cpu_feature_guard's message
)
"""A start-up line of TensorFlow's C++ libraries (absl format or its known continuation)."""


def verbose_requested(environ: Optional[dict] = None) -> bool:
    """CAPSRUN_VERBOSE set to anything but '', 0, false or no."""
    value = (os.environ if environ is None else environ).get(VERBOSE_ENV, "")
    return value.strip().lower() not in ("", "0", "false", "no")


def strip_banner(text: str) -> str:
    """`text` without TensorFlow's start-up lines."""
    return "".join(line for line in text.splitlines(keepends=True) if not BANNER.match(line))


@contextmanager
def filtered_stderr() -> Iterator[None]:
    """Runs the block with file descriptor 2 on a temporary file, then writes what the block
    printed to the real stderr without TensorFlow's start-up lines."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable descriptor 2: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = strip_banner(captured.read().decode(errors="replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """TensorFlow's own loader, executing the package under `filtered_stderr`."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> object:
        return self.loader.create_module(spec)

    def exec_module(self, module: object) -> None:
        with filtered_stderr():
            self.loader.exec_module(module)

    def __getattr__(self, name: str) -> object:  # get_resource_reader, get_filename, ...
        return getattr(self.loader, name)


class QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as usual, but gives it a loader whose import filters stderr; removes
    itself once used. capsrun imports TensorFlow lazily in many modules (after the config checks),
    so the first import, wherever it happens, is the one to catch."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: object = None
                  ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname != "tensorflow":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow(level: int = logging.WARNING, verbose: Optional[bool] = None) -> None:
    """Only TensorFlow's errors from C++ (unless TF_CPP_MIN_LOG_LEVEL is set already; it must be
    set before TensorFlow is imported), none of its start-up lines, and only messages at `level`
    or above from its Python loggers (tensorflow, absl). With `verbose` (default: CAPSRUN_VERBOSE)
    nothing is changed: TensorFlow prints what it prints by itself."""
    if verbose if verbose is not None else verbose_requested():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(level)
    if "tensorflow" not in sys.modules and not any(isinstance(f, QuietTensorFlowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, QuietTensorFlowFinder())
