"""The one file-hashing helper: known digests, files larger than one read, no hang on a FIFO."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from dladiff_app.core.hashing import sha256_file

# FIPS 180-2 test vectors.
ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
MILLION_A = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"


def test_known_digests_including_a_file_longer_than_one_chunk(tmp_path: Path) -> None:
    small = tmp_path / "abc.bin"
    small.write_bytes(b"abc")
    assert sha256_file(small) == ABC
    million = tmp_path / "a.bin"
    million.write_bytes(b"a" * 1_000_000)
    assert sha256_file(str(million)) == MILLION_A
    data = bytes(range(256)) * (3 * 4096) + b"tail"  # 3 MiB and 4 bytes: four reads
    big = tmp_path / "big.bin"
    big.write_bytes(data)
    assert sha256_file(big) == hashlib.sha256(data).hexdigest()


def test_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="not a regular file"):
        sha256_file(tmp_path)
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "missing")
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "pipe"
        os.mkfifo(fifo)
        with pytest.raises(OSError, match="not a regular file"):
            sha256_file(fifo)  # opening it would block with no writer
