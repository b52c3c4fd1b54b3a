"""Plain HTTP downloads against a real local server: progress, resume, hashes, cancel."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import (
    Cancelled,
    ModelDownloadError,
    ModelIntegrityError,
    OutputError,
)
from dladiff_app.engine.models.download import (
    download_file,
    marker_path,
    part_path,
    read_marker,
)
from tests.fixtures.http_server import FileServer, serve_files

CHUNK = 4096
PAYLOAD = os.urandom(10 * CHUNK + 123)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture()
def server() -> Iterator[FileServer]:
    with serve_files({"/blob.bin": PAYLOAD}) as srv:
        yield srv


def test_download_reports_progress_and_writes_marker(server: FileServer, tmp_path: Path) -> None:
    events: list[tuple[int, int | None]] = []
    dest = tmp_path / "blob.bin"
    out = download_file(server.url("/blob.bin"), dest, sha256=PAYLOAD_SHA,
                        progress=lambda d, t: events.append((d, t)), chunk_size=CHUNK)
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert len(events) == 11
    assert events[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [d for d, _ in events] == sorted(d for d, _ in events)
    assert read_marker(dest) == {"url": server.url("/blob.bin"), "size": len(PAYLOAD),
                                 "sha256": PAYLOAD_SHA}
    assert not part_path(dest).exists()
    # A second call finds the completed file and does not touch the network.
    n_requests = len(server.requests)
    download_file(server.url("/blob.bin"), dest, sha256=PAYLOAD_SHA)
    assert len(server.requests) == n_requests


def test_resume_after_interrupted_transfer(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    server.cut_after["/blob.bin"] = 3 * CHUNK + 7
    with pytest.raises(ModelDownloadError, match="interrupted"):
        download_file(server.url("/blob.bin"), dest, sha256=PAYLOAD_SHA, chunk_size=CHUNK)
    kept = part_path(dest).stat().st_size
    assert kept == 3 * CHUNK + 7
    assert not dest.exists()

    download_file(server.url("/blob.bin"), dest, sha256=PAYLOAD_SHA, chunk_size=CHUNK)
    assert dest.read_bytes() == PAYLOAD
    path, range_header, sent = server.requests[-1]
    assert range_header == f"bytes={kept}-"
    assert sent == len(PAYLOAD) - kept  # only the missing tail travelled


def test_server_ignoring_range_restarts_cleanly(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    part_path(dest).write_bytes(PAYLOAD[:100])
    server.ignore_range = True
    download_file(server.url("/blob.bin"), dest, sha256=PAYLOAD_SHA, chunk_size=CHUNK)
    assert dest.read_bytes() == PAYLOAD


def test_hash_mismatch_deletes_and_raises(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    with pytest.raises(ModelIntegrityError, match="SHA-256 mismatch"):
        download_file(server.url("/blob.bin"), dest, sha256="0" * 64, chunk_size=CHUNK)
    assert not dest.exists() and not part_path(dest).exists() and not marker_path(dest).exists()


def test_size_mismatch_deletes_and_raises(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    with pytest.raises(ModelIntegrityError, match="expected"):
        download_file(server.url("/blob.bin"), dest, expected_size=len(PAYLOAD) + 1)
    assert not dest.exists() and not part_path(dest).exists()


def test_cancel_stops_within_one_chunk_and_keeps_part(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    token = CancelToken()
    seen: list[int] = []

    def progress(done: int, total: int | None) -> None:
        seen.append(done)
        if done >= 2 * CHUNK:
            token.cancel()

    with pytest.raises(Cancelled):
        download_file(server.url("/blob.bin"), dest, progress=progress, cancel=token,
                      chunk_size=CHUNK)
    assert seen == [CHUNK, 2 * CHUNK]
    assert part_path(dest).stat().st_size == 2 * CHUNK
    assert not dest.exists()
    download_file(server.url("/blob.bin"), dest, sha256=PAYLOAD_SHA, chunk_size=CHUNK)
    assert dest.read_bytes() == PAYLOAD


def test_http_error_and_bad_scheme_are_typed(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(ModelDownloadError, match="404"):
        download_file(server.url("/missing.bin"), tmp_path / "x")
    with pytest.raises(ModelDownloadError, match="only http"):
        download_file("file:///etc/passwd", tmp_path / "y")


def test_hub_progress_aggregates_and_cancels() -> None:
    from dladiff_app.engine.models.download import _HubProgress, _tqdm_class

    token = CancelToken()
    events: list[tuple[int, int | None]] = []
    sink = _HubProgress(lambda d, t: events.append((d, t)), token, total=100)
    bar = _tqdm_class(sink)(total=60)
    bar.update(50)
    sink.file_done(60)
    bar.update(30)
    assert events == [(50, 100), (90, 100)]
    token.cancel()
    with pytest.raises(Cancelled):
        bar.update(1)  # a hub transfer stops at the next chunk


def test_unwritable_destination_is_a_typed_error_naming_the_file(server: FileServer,
                                                                 tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    part_path(dest).mkdir()  # the partial file cannot be created: a real OS refusal
    with pytest.raises(OutputError, match=r"blob\.bin.*(folder|refused)"):
        download_file(server.url("/blob.bin"), dest, chunk_size=CHUNK)
    assert not dest.exists()
    blocked = tmp_path / "file"
    blocked.write_text("a file where the models folder would go")
    with pytest.raises(OutputError, match="file"):
        download_file(server.url("/blob.bin"), blocked / "blob.bin", chunk_size=CHUNK)
