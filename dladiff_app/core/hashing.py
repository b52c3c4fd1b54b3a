"""SHA-256 of a file's bytes: the one hashing loop behind the journal's output checks, the
photos' source hashes and the model store's integrity checks."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import IO

_CHUNK = 1 << 20  # 1 MiB: model files are gigabytes, never read whole into memory


def sha256_stream(handle: IO[bytes]) -> str:
    """Hex SHA-256 of everything left to read in the binary ``handle`` (read in 1 MiB chunks;
    read errors propagate as OSError)."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(_CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path | str) -> str:
    """Hex SHA-256 of the regular file at ``path``. Raises OSError, also for anything that is
    not a regular file: ``open`` on a FIFO would block forever, a device never ends."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(f"{path} is not a regular file")
    with open(path, "rb") as handle:
        return sha256_stream(handle)
