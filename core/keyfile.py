"""The one way a secret (private key, key share) is written to disk.

Atomic and private: the bytes go to a temporary file in the same folder created with mode 0600
(never world-readable, even briefly), are fsynced, and replace the target by ``rename``; the
folder is fsynced so the new name survives a power cut. A crash leaves the old key or the new
one, never a truncated file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_private(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)  # mkstemp already uses 0600; be explicit against odd umasks
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
