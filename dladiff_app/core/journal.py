"""The job journal: an append-only JSON-lines file in the output folder that survives ``kill -9``.

Why append-only lines: one ``write()`` of a short line to a file opened with ``O_APPEND`` followed
by ``fsync`` either lands whole or leaves a torn last line, which the reader drops. Nothing is ever
rewritten in place, so a crash cannot damage records that were already there.

A photo goes ``queued -> running -> writing -> done`` (or ``failed``). ``writing`` records the
SHA-256 and the planned name of the encoded file *before* it is created; if the process dies
between creating the file and recording ``done``, resume finds the complete file by its hash and
adopts it instead of writing a second copy (exactly-once output).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dladiff_app.core.errors import OutputError
from dladiff_app.core.jobs import AlbumMode, ExportOptions, OutputFormat, ProtectJob
from dladiff_app.core.presets import Layers, ProtectionSettings

JOURNAL_NAME = ".dladiff-journal.jsonl"
JOURNAL_VERSION = 1
STATES = ("queued", "running", "writing", "done", "failed")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def job_to_dict(job: ProtectJob) -> dict[str, Any]:
    return {
        "inputs": [str(Path(p).absolute()) for p in job.inputs],
        "output_dir": str(Path(job.output_dir).absolute()),
        "settings": job.settings.to_dict(),
        "export": {"format": job.export.format.value, "quality": job.export.quality,
                   "keep_metadata": job.export.keep_metadata,
                   "write_report": job.export.write_report},
        "device": job.device,
        "recursive": job.recursive,
        "album_mode": job.album_mode.value,
        "pipeline": str(Path(job.pipeline).absolute()) if job.pipeline else None,
    }


def job_from_dict(d: dict[str, Any], *, resume: bool = True) -> ProtectJob:
    settings = dict(d["settings"])
    settings["layers"] = Layers(settings["layers"])
    export = d["export"]
    return ProtectJob(
        inputs=tuple(Path(p) for p in d["inputs"]),
        output_dir=Path(d["output_dir"]),
        settings=ProtectionSettings(**settings),
        export=ExportOptions(format=OutputFormat(export["format"]), quality=export["quality"],
                             keep_metadata=export["keep_metadata"],
                             write_report=export.get("write_report", True)),
        device=d.get("device", "auto"),
        recursive=d.get("recursive", False),
        album_mode=AlbumMode(d.get("album_mode", AlbumMode.PER_FOLDER.value)),
        resume=resume,
        pipeline=Path(d["pipeline"]) if d.get("pipeline") else None,
    )


@dataclass
class PhotoEntry:
    """The latest known state of one photo, folded from all its records."""

    key: str
    album: str
    source: str
    state: str
    output: str | None = None
    sha256: str | None = None
    planned: str | None = None
    reason: str | None = None
    result: dict[str, Any] | None = None
    done_count: int = 0
    attempts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Journal:
    """Reader/writer of ``OUT/.dladiff-journal.jsonl``. Not shared between processes."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / JOURNAL_NAME
        self.job: dict[str, Any] | None = None
        self.photos: dict[str, PhotoEntry] = {}
        self.albums: dict[str, dict[str, Any]] = {}
        self.torn_lines = 0
        self.records = 0
        self._needs_newline = False
        if self.path.exists():
            self._load()

    @property
    def exists(self) -> bool:
        return self.path.exists()

    # ------------------------------------------------------------------ reading
    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise OutputError(self.path, f"the job journal cannot be read ({exc.strerror})") from exc
        self._needs_newline = bool(data) and not data.endswith(b"\n")
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                self.torn_lines += 1  # a line cut by a crash: it never happened
                continue
            if isinstance(rec, dict):
                self._apply(rec)

    def _apply(self, rec: dict[str, Any]) -> None:
        self.records += 1
        kind = rec.get("kind")
        if kind == "job":
            if self.job is None:
                self.job = rec["job"]
        elif kind == "album":
            self.albums.setdefault(rec["album"], {}).update(
                {k: v for k, v in rec.items() if k not in ("kind", "album", "t")})
        elif kind == "photo":
            key = rec["key"]
            entry = self.photos.get(key)
            if entry is None:
                entry = PhotoEntry(key=key, album=rec.get("album", ""),
                                   source=rec.get("source", key), state=rec["state"])
                self.photos[key] = entry
            entry.state = rec["state"]
            if entry.state == "running":
                entry.attempts += 1
                entry.planned = None
            for name in ("output", "sha256", "planned", "reason", "result"):
                if name in rec:
                    setattr(entry, name, rec[name])
            if entry.state == "done":
                entry.done_count += 1
                entry.reason = None

    # ------------------------------------------------------------------ writing
    def _append(self, rec: dict[str, Any]) -> None:
        rec = {**rec, "t": round(time.time(), 3)}
        line = json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n"
        payload = (("\n" if self._needs_newline else "") + line).encode("utf-8")
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                written = os.write(fd, payload)
                if written != len(payload):
                    raise OSError(28, "short write (the disk is probably full)")
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise OutputError(self.path, f"the job journal cannot be written "
                                         f"({exc.strerror or exc})") from exc
        self._needs_newline = False
        self._apply(rec)

    def start_job(self, job: ProtectJob) -> None:
        if self.job is None:
            self._append({"kind": "job", "v": JOURNAL_VERSION, "job": job_to_dict(job)})
        else:
            self._append({"kind": "resume", "v": JOURNAL_VERSION})

    def set_state(self, key: str, state: str, *, album: str, source: str,
                  **fields: Any) -> None:
        if state not in STATES:
            raise ValueError(f"unknown photo state {state!r}")
        self._append({"kind": "photo", "key": key, "album": album, "source": source,
                      "state": state, **fields})

    def set_album(self, album: str, **fields: Any) -> None:
        self._append({"kind": "album", "album": album, **fields})

    # ------------------------------------------------------------------ queries
    def entry(self, key: str) -> PhotoEntry | None:
        return self.photos.get(key)

    def done_in_album(self, album: str) -> list[PhotoEntry]:
        return [e for e in self.photos.values() if e.album == album and e.state == "done"]

    def failed_in_album(self, album: str) -> list[PhotoEntry]:
        return [e for e in self.photos.values() if e.album == album and e.state == "failed"]

    def problems(self) -> list[str]:
        """Consistency check: every done photo recorded done once, its output present with the
        recorded hash. Empty list = consistent."""
        found: list[str] = []
        for e in self.photos.values():
            if e.done_count > 1:
                found.append(f"{e.source}: recorded done {e.done_count} times")
            if e.state == "done":
                if not e.output or not Path(e.output).is_file():
                    found.append(f"{e.source}: output {e.output} is missing")
                elif sha256_file(Path(e.output)) != e.sha256:
                    found.append(f"{e.source}: output {e.output} does not match its hash")
        return found
