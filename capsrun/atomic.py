"""Atomic file writes: a temporary file beside the target, renamed over it. A crash leaves either
the old file or the new one, never half a file (nothing that could be mistaken for a result)."""
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

PathLike = Union[str, os.PathLike]


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically, with the permissions of a normally created file
    (mkstemp's temporary files are private, 0600)."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def unwritable_reason(folder: PathLike) -> Optional[str]:
    """None when `folder` (created if missing) accepts a synced 64 KiB file, else the operating
    system's reason (e.g. "Read-only file system", "No space left on device")."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"x" * 65536)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        return error.strerror or str(error)
    return None


def write_json_atomic(path: PathLike, data: Any) -> None:
    """Writes `data` as indented, key-sorted JSON to `path` atomically."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
