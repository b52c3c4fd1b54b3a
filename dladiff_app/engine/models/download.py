"""Downloads: plain HTTP(S) files with resume and hash checks, and Hugging Face hub files.

A plain download writes ``<dest>.part``, resumes it with a ``Range`` request, checks size and
SHA-256, renames it to ``<dest>`` and writes ``<dest>.complete`` (JSON with size and hash). A
cancel or a network error keeps the ``.part`` so the next call resumes; a hash or size mismatch
deletes it. Nothing here decides whether the network may be used: the store checks offline mode
before calling in.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dladiff_app.core.atomic import atomic_write_text, describe_os_error
from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import (
    Cancelled,
    ModelDownloadError,
    ModelIntegrityError,
    OutputError,
)
from dladiff_app.core.hashing import sha256_file

ProgressFn = Callable[[int, "int | None"], None]

_USER_AGENT = "dladiff-app (model download)"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def marker_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".complete")


def require_sha256(path: Path, expected: str, *, what: str, fix: str) -> None:
    """Raise ``ModelIntegrityError`` unless ``path`` hashes to ``expected``; the message says
    the file is damaged or not ``what`` and how to ``fix`` it."""
    got = sha256_file(path)
    if got != expected:
        raise ModelIntegrityError(f"{path.name} has SHA-256 {got}, expected {expected}: the file "
                                  f"is damaged or not {what}. {fix}")


def read_marker(dest: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(marker_path(dest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_complete(dest: Path, sha256: str | None) -> bool:
    marker = read_marker(dest)
    if marker is None or not dest.is_file():
        return False
    if marker.get("size") != dest.stat().st_size:
        return False
    return sha256 is None or marker.get("sha256") == sha256.lower()


def _open(url: str, headers: dict[str, str], timeout: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - scheme checked
    except urllib.error.HTTPError as exc:
        if exc.code == 416:
            raise
        raise ModelDownloadError(
            f"Download of {url} failed: the server answered {exc.code} {exc.reason}."
        ) from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelDownloadError(
            f"Download of {url} failed: {reason}. Check the internet connection and run the "
            "download again; it resumes where it stopped."
        ) from exc


def _receive(response: http.client.HTTPResponse, part: Path, offset: int, url: str, dest: Path,
             chunk_size: int, total: int | None, progress: ProgressFn | None,
             cancel: CancelToken | None) -> int:
    """Append the response body to ``part`` (from ``offset``); returns the bytes now in it.
    A read error is a :class:`ModelDownloadError`, a write error (disk full, ...) an
    :class:`OutputError`; either way the ``.part`` is kept for a resume."""
    done = offset
    try:
        with open(part, "ab" if offset else "wb") as out:
            while True:
                try:
                    chunk = response.read(chunk_size)
                except (http.client.IncompleteRead, OSError) as exc:
                    raise ModelDownloadError(
                        f"Download of {url} was interrupted after {done} bytes ({exc}); run it "
                        "again to resume."
                    ) from exc
                if not chunk:
                    return done
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
                if cancel is not None and cancel.cancelled:
                    out.flush()
                    raise Cancelled(f"Download of {dest.name} cancelled; it resumes next time.")
    except OSError as exc:
        raise OutputError(part, f"{describe_os_error(exc)} (the download resumes from here "
                                "next time)") from exc


def download_file(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    expected_size: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
    chunk_size: int = 1 << 20,
    timeout: float = 30,
    headers: dict[str, str] | None = None,
) -> Path:
    """Fetch ``url`` into ``dest`` and return ``dest``.

    ``progress(done, total)`` is called after every chunk (``total`` None when unknown).
    ``cancel`` is checked after every chunk: :class:`Cancelled` is raised with the ``.part`` kept.
    Raises :class:`ModelIntegrityError` (file deleted) on size/hash mismatch and
    :class:`ModelDownloadError` (``.part`` kept) on network errors.
    """
    if not url.lower().startswith(("https://", "http://")):
        raise ModelDownloadError(f"Refusing to download {url}: only http(s) URLs are allowed.")
    dest = Path(dest)
    if _is_complete(dest, sha256):
        if progress is not None:
            size = dest.stat().st_size
            progress(size, size)
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        marker_path(dest).unlink(missing_ok=True)
    except OSError as exc:
        raise OutputError(dest.parent, describe_os_error(exc)) from exc
    part = part_path(dest)
    if expected_size is not None and part.is_file() and part.stat().st_size > expected_size:
        part.unlink()

    offset = part.stat().st_size if part.is_file() else 0
    request_headers = {"User-Agent": _USER_AGENT, **(headers or {})}
    if offset:
        request_headers["Range"] = f"bytes={offset}-"
    try:
        response = _open(url, request_headers, timeout)
    except urllib.error.HTTPError as exc:
        # 416: the range starts at or past the end: the .part may already hold everything.
        if expected_size is None or offset != expected_size:
            part.unlink(missing_ok=True)
            offset = 0
            request_headers.pop("Range", None)
            response = _open(url, request_headers, timeout)
        else:
            response = None
        exc.close()

    total: int | None = expected_size
    if response is not None:
        with response:
            if offset and response.status == 206:
                match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
                if not match or int(match.group(1)) != offset:
                    raise ModelDownloadError(
                        f"Download of {url} failed: the server resumed at the wrong offset; "
                        "run the download again."
                    )
                if match.group(3) != "*":
                    total = int(match.group(3))
            else:
                offset = 0  # the server ignored the Range header: start over
            length = response.headers.get("Content-Length")
            if length is not None and total is None:
                total = offset + int(length)
            done = _receive(response, part, offset, url, dest, chunk_size, total, progress,
                            cancel)
            if length is not None and done < offset + int(length):
                raise ModelDownloadError(
                    f"Download of {url} was interrupted after {done} bytes; run it again to "
                    "resume."
                )

    actual_size = part.stat().st_size
    if expected_size is not None and actual_size != expected_size:
        part.unlink(missing_ok=True)
        raise ModelIntegrityError(
            f"{dest.name}: downloaded {actual_size} bytes but expected {expected_size}; the file "
            "was deleted. Run the download again."
        )
    actual_hash = sha256_file(part)
    if sha256 is not None and actual_hash != sha256.lower():
        part.unlink(missing_ok=True)
        raise ModelIntegrityError(
            f"{dest.name}: SHA-256 mismatch (expected {sha256.lower()}, got {actual_hash}); the "
            "corrupt file was deleted. Run the download again; if it keeps failing the source "
            "has changed."
        )
    os.replace(part, dest)
    atomic_write_text(marker_path(dest),
                      json.dumps({"url": url, "size": actual_size, "sha256": actual_hash}))
    return dest


# --------------------------------------------------------------------------- Hugging Face hub


class _HubProgress:
    """Aggregates byte counts across several hub files for one ``progress`` callback and checks
    ``cancel`` on every update, so a cancel stops a transfer within one chunk."""

    def __init__(self, progress: ProgressFn | None, cancel: CancelToken | None,
                 total: int | None) -> None:
        self.progress = progress
        self.cancel = cancel
        self.total = total
        self.finished = 0
        self.current = 0

    def update(self, n: int) -> None:
        self.current += n
        if self.progress is not None:
            done = self.finished + self.current
            total = max(self.total, done) if self.total is not None else None
            self.progress(done, total)
        if self.cancel is not None:
            self.cancel.check()

    def file_done(self, size: int) -> None:
        self.finished += size
        self.current = 0


def _tqdm_class(sink: _HubProgress) -> type:
    from tqdm.auto import tqdm

    class _Tqdm(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True  # we report through ``sink``, not to the terminal
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            if n:
                sink.update(int(n))
            return super().update(n)

    return _Tqdm


@contextmanager
def _hub_errors(repo_id: str) -> Iterator[None]:
    from huggingface_hub import errors as hub_errors

    try:
        yield
    except Cancelled:
        raise
    except hub_errors.OfflineModeIsEnabled as exc:
        raise ModelDownloadError(
            f"Cannot download {repo_id}: offline mode is on (HF_HUB_OFFLINE)."
        ) from exc
    except (hub_errors.RepositoryNotFoundError, hub_errors.RevisionNotFoundError,
            hub_errors.EntryNotFoundError) as exc:
        raise ModelDownloadError(f"Cannot download {repo_id}: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise ModelDownloadError(
            f"Download of {repo_id} failed: {exc}. Check the internet connection and run the "
            "download again; it resumes where it stopped."
        ) from exc


def download_hub_files(
    repo_id: str,
    filenames: Sequence[str],
    dest_dir: Path,
    *,
    revision: str | None = None,
    total_bytes: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
    endpoint: str | None = None,
) -> Path:
    """Download ``filenames`` of hub repo ``repo_id`` into ``dest_dir`` (same relative paths).

    huggingface_hub resumes partial files (kept under ``dest_dir/.cache``), honours
    ``HF_HUB_OFFLINE`` and verifies each file against the hub's ETag (SHA-256 for LFS files).
    ``total_bytes`` (the registry's estimate) scales the progress total.
    """
    from huggingface_hub import hf_hub_download

    sink = _HubProgress(progress, cancel, total_bytes)
    tqdm_class = _tqdm_class(sink)
    dest_dir.mkdir(parents=True, exist_ok=True)
    with _hub_errors(repo_id):
        for filename in filenames:
            if cancel is not None:
                cancel.check()
            local = hf_hub_download(
                repo_id, filename, revision=revision, local_dir=dest_dir,
                tqdm_class=tqdm_class, endpoint=endpoint,
            )
            sink.file_done(Path(str(local)).stat().st_size)
    return dest_dir
