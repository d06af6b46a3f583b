"""The one place that quietens TensorFlow: its C++ start-up chatter and its Python warnings (e.g.
about unrestored optimizer slots) would bury the one line of an error or a progress message."""
import logging
import os


def quiet_tensorflow(level: int = logging.WARNING) -> None:
    """Only TensorFlow's errors from C++ (unless TF_CPP_MIN_LOG_LEVEL is set already; it must be
    set before TensorFlow is imported), and only messages at `level` or above from its Python
    loggers (tensorflow, absl)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(level)
