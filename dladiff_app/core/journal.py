"""The job journal: an append-only JSON-lines file in the output folder that survives ``kill -9``.

Why append-only lines: one ``write()`` of a short line to a file opened with ``O_APPEND`` followed
by ``fsync`` either lands whole or leaves a torn last line, which the reader drops. Nothing is ever
rewritten in place, so a crash cannot damage records that were already there.

A photo goes ``queued -> running -> writing -> done`` (or ``failed``). ``writing`` records the
SHA-256 and the planned name of the encoded file *before* it is created; if the process dies
between creating the file and recording ``done``, resume finds the complete file by its hash and
adopts it instead of writing a second copy (exactly-once output). The ``writing`` record also
carries the photo's complete result (layers, notes, scores measured on the encoded bytes), so an
adopted file keeps everything a normal finish records.

A photo is keyed by *what* is protected *how*: the SHA-256 of the source file, the protection
settings, the export options and the model versions (:func:`protection_key`). The same photo at
other settings is another protection, written to a new file; a photo moved or renamed keeps its
key. ``unprotected`` is a finished state too: no shield could change the photo (no face found).
Each record also carries ``what``: the same key without the model versions, so a resume after a
face model was installed finds the photos it already protected at these settings. Files with
identical bytes in one job (``IMG_0001.jpg``, ``IMG_0001 (1).jpg``) are separate photos: every
copy but one has a key with a suffix derived from its path (:func:`copy_key`).

Paths of the job's own files (outputs, manifests, reports) are stored relative to the job folder,
so a job resumed from another working directory, or a moved job folder, still finds them.
Records missing a field (a journal edited by hand or by another version) are ignored and counted
in ``damaged`` instead of crashing the reader.
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
from dladiff_app.core.hashing import sha256_file
from dladiff_app.core.jobs import AlbumMode, ExportOptions, OutputFormat, ProtectJob
from dladiff_app.core.names import json_text
from dladiff_app.core.presets import Layers, ProtectionSettings

JOURNAL_NAME = ".dladiff-journal.jsonl"
JOURNAL_VERSION = 2
STATES = ("queued", "running", "writing", "done", "failed", "unprotected")
# Fields holding paths of the job's own files: written relative to the job folder.
_PATH_FIELDS = ("output", "planned")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def protection_key(source_sha256: str, settings: dict[str, Any], export: dict[str, Any],
                   models: dict[str, Any]) -> str:
    """The journal key of one protection: the same bytes protected with the same settings,
    export options and model versions. The preset's *name* is left out (``custom`` with Medium's
    numbers is Medium)."""
    what = {"source": source_sha256,
            "settings": {k: v for k, v in settings.items() if k != "preset"},
            "export": export, "models": models}
    text = json.dumps(what, sort_keys=True, separators=(",", ":"), default=str)
    return "p-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


def copy_key(key: str, source: str) -> str:
    """The key of one more copy of a photo whose bytes another file of the job also holds."""
    return f"{key}-{hashlib.sha256(os.fsencode(source)).hexdigest()[:12]}"


def copy_suffix(key: str) -> str:
    """The copy suffix of a key made by :func:`copy_key` ('' for a photo's own key)."""
    base = key.rsplit("-", 1)[0]
    return key[len(base):] if base.startswith("p-") and base != "p" else ""


def job_to_dict(job: ProtectJob) -> dict[str, Any]:
    return {
        "inputs": [str(Path(p).absolute()) for p in job.inputs],
        "output_dir": str(Path(job.output_dir).absolute()),
        "settings": job.settings.to_dict(),
        "export": {"format": job.export.format.value, "quality": job.export.quality,
                   "keep_metadata": job.export.keep_metadata,
                   "write_report": job.export.write_report,
                   "export_unprotected": job.export.export_unprotected},
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
                             write_report=export.get("write_report", True),
                             export_unprotected=export.get("export_unprotected", False)),
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
    source_sha256: str | None = None
    settings: dict[str, Any] | None = None   # preset, eps, layers of this protection
    what: str | None = None   # the key without model versions (see the module docstring)
    done_count: int = 0
    attempts: int = 0
    # Attempts that ended with the process gone (a ``running`` record followed by the next
    # attempt's ``running``); see :meth:`Journal.times_crashed`.
    crashes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """Protected, or finished as not protectable (no face): nothing left to do."""
        return self.state in ("done", "unprotected")


class Journal:
    """Reader/writer of ``OUT/.dladiff-journal.jsonl``. Not shared between processes."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir).absolute()
        self.path = self.out_dir / JOURNAL_NAME
        self.job: dict[str, Any] | None = None       # the latest job that ran in this folder
        self.first_job: dict[str, Any] | None = None
        self.photos: dict[str, PhotoEntry] = {}
        self._by_what: dict[str, list[PhotoEntry]] = {}
        self.albums: dict[str, dict[str, Any]] = {}
        self.torn_lines = 0
        self.damaged = 0  # whole records ignored because a field was missing or malformed
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
            if not isinstance(rec, dict):
                self.damaged += 1
                continue
            try:
                self._apply(rec)
            except (KeyError, TypeError, ValueError, AttributeError):
                self.damaged += 1  # a record without its fields: as if it was never written

    # ------------------------------------------------------------------ paths
    def relative(self, path: str | Path) -> str:
        """``path`` relative to the job folder when it lies inside it (else absolute)."""
        p = Path(path)
        p = p if p.is_absolute() else Path.cwd() / p
        try:
            return p.relative_to(self.out_dir).as_posix()
        except ValueError:
            return str(p)

    def resolve(self, stored: str) -> str:
        """A stored path as an absolute path (relative ones are inside the job folder)."""
        p = Path(stored)
        return str(p if p.is_absolute() else self.out_dir / p)

    def _apply(self, rec: dict[str, Any]) -> None:
        kind = rec.get("kind")
        if kind in ("job", "resume"):
            if "job" in rec:
                if not isinstance(rec["job"], dict):
                    raise TypeError("job record without a job")
                self.job = rec["job"]
                if self.first_job is None:
                    self.first_job = rec["job"]
        elif kind == "album":
            fields = {k: v for k, v in rec.items() if k not in ("kind", "album", "t")}
            for name in ("manifest", "report"):
                if name in fields:
                    fields[name] = self.resolve(str(fields[name]))
            self.albums.setdefault(str(rec["album"]), {}).update(fields)
        elif kind == "photo":
            key, state = str(rec["key"]), str(rec["state"])
            if state not in STATES:
                raise ValueError(state)
            entry = self.photos.get(key)
            if entry is None:
                entry = PhotoEntry(key=key, album=str(rec.get("album", "")),
                                   source=str(rec.get("source", key)), state="queued")
                self.photos[key] = entry
            if state == "running":
                entry.attempts += 1
                entry.planned = None
                if entry.state == "running":  # the attempt before never ended: it crashed
                    entry.crashes += 1
            entry.state = state
            if "crashes" in rec:  # a photo skipped for its crashes keeps their count
                entry.crashes = max(entry.crashes, int(rec["crashes"]))
            if "what" in rec and entry.what is None:
                entry.what = str(rec["what"])
                self._by_what.setdefault(entry.what, []).append(entry)
            for name in ("output", "sha256", "planned", "reason", "result", "source_sha256",
                         "settings"):
                if name in rec:
                    value = rec[name]
                    if name in _PATH_FIELDS and value is not None:
                        value = self.resolve(str(value))
                    if name == "result" and isinstance(value, dict) and "output" in value:
                        value = {**value, "output": self.resolve(str(value["output"]))}
                    setattr(entry, name, value)
            if state == "done":
                entry.done_count += 1
                entry.reason = None
            if state == "unprotected" and "output" not in rec:
                entry.output = None
        else:
            return
        self.records += 1

    # ------------------------------------------------------------------ writing
    def _append(self, rec: dict[str, Any]) -> None:
        rec = {**rec, "t": round(time.time(), 3)}
        # File names that are not UTF-8 are stored as escapes that read back to the same bytes.
        line = json_text(rec, separators=(",", ":")) + "\n"
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
        """Record the job; a later run records its own settings (what ``--resume`` continues)."""
        kind = "job" if self.job is None else "resume"
        self._append({"kind": kind, "v": JOURNAL_VERSION, "job": job_to_dict(job)})

    def set_state(self, key: str, state: str, *, album: str, source: str,
                  **fields: Any) -> None:
        if state not in STATES:
            raise ValueError(f"unknown photo state {state!r}")
        for name in _PATH_FIELDS:
            if fields.get(name) is not None:
                fields[name] = self.relative(fields[name])
        result = fields.get("result")
        if isinstance(result, dict) and result.get("output"):
            fields["result"] = {**result, "output": self.relative(result["output"])}
        self._append({"kind": "photo", "key": key, "album": album, "source": source,
                      "state": state, **fields})

    def set_album(self, album: str, **fields: Any) -> None:
        for name in ("manifest", "report"):
            if fields.get(name) is not None:
                fields[name] = self.relative(fields[name])
        self._append({"kind": "album", "album": album, **fields})

    # ------------------------------------------------------------------ queries
    def entry(self, key: str) -> PhotoEntry | None:
        return self.photos.get(key)

    def times_crashed(self, key: str) -> int:
        """How often the process died while protecting this photo (out of memory, killed):
        ask before this process starts an attempt of its own. A cancelled attempt is recorded
        ``queued`` and does not count."""
        entry = self.photos.get(key)
        if entry is None:
            return 0
        return entry.crashes + (1 if entry.state == "running" else 0)

    def same_what(self, what: str) -> list[PhotoEntry]:
        """Every protection of this source at these settings, whatever the model versions."""
        return list(self._by_what.get(what, ()))

    def done_in_album(self, album: str) -> list[PhotoEntry]:
        return [e for e in self.photos.values() if e.album == album and e.state == "done"]

    def unprotected_in_album(self, album: str) -> list[PhotoEntry]:
        return [e for e in self.photos.values()
                if e.album == album and e.state == "unprotected"]

    def failed_in_album(self, album: str) -> list[PhotoEntry]:
        """Failures not made good since (a later run protected the same source file)."""
        finished = {e.source for e in self.photos.values() if e.finished}
        return [e for e in self.photos.values() if e.album == album and e.state == "failed"
                and e.source not in finished]

    def other_protections(self, entry_key: str, source_sha256: str,
                          what: str | None = None) -> list[PhotoEntry]:
        """Earlier protections of the same source file at other settings (still on disk);
        copies of the same bytes protected at these settings (``what``) are not listed."""
        return [e for e in self.photos.values() if e.key != entry_key and e.state == "done"
                and e.source_sha256 == source_sha256 and (what is None or e.what != what)
                and e.output and Path(e.output).is_file()]

    def results_by_source(self) -> dict[str, list[PhotoEntry]]:
        """Finished protections whose file is still there, by absolute source path (latest
        last): what the app shows as already protected when the same photos are listed again."""
        found: dict[str, list[PhotoEntry]] = {}
        for e in self.photos.values():
            if e.state == "done" and e.result and e.output and Path(e.output).is_file():
                found.setdefault(e.source, []).append(e)
        return found

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
