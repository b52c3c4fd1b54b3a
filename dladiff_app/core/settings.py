"""User settings: a typed dataclass stored as JSON with a schema version.

Loading never fails: unknown keys are ignored (a newer app wrote them), a wrong-typed value falls
back to its default, a corrupt file is kept as ``settings.json.bad-<time>`` and defaults are used,
and a file from a newer schema is left untouched while defaults are used. Saving is atomic, so a
crash mid-write never leaves a half-written file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dladiff_app.core.paths import settings_path

SCHEMA_VERSION = 1

_log = logging.getLogger(__name__)


@dataclass
class Settings:
    schema_version: int = SCHEMA_VERSION
    device: str = "auto"                 # "auto" | "cuda" | "cuda:N" | "mps" | "cpu"
    cache_dir: str | None = None         # overrides the platform cache folder
    model_paths: dict[str, str] = field(default_factory=dict)  # model id -> user's local copy
    default_output: str | None = None
    default_preset: str = "medium"
    keep_metadata: bool = False
    output_format: str = "png"
    jpeg_quality: int = 95
    first_run_done: bool = False
    # Also write photos no shield could change (no face found) as "<name>-unprotected.<ext>".
    export_unprotected: bool = False
    offline_zeroshot: bool = False       # chose "Start offline": start with the zero-shot shield

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Accepted JSON types per field (JSON has no tuples; ints are not bools).
_TYPES: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "device": (str,),
    "cache_dir": (str, type(None)),
    "model_paths": (dict,),
    "default_output": (str, type(None)),
    "default_preset": (str,),
    "keep_metadata": (bool,),
    "output_format": (str,),
    "jpeg_quality": (int,),
    "first_run_done": (bool,),
    "export_unprotected": (bool,),
    "offline_zeroshot": (bool,),
}


def _valid(name: str, value: Any) -> bool:
    types = _TYPES[name]
    if isinstance(value, bool) and bool not in types:
        return False
    if not isinstance(value, types):
        return False
    if isinstance(value, dict):
        return all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    return True


def settings_from_dict(data: dict[str, Any]) -> Settings:
    """Build settings from parsed JSON, keeping only known keys with the right type."""
    defaults = Settings()
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        if f.name not in data:
            continue
        value = data[f.name]
        if _valid(f.name, value):
            kwargs[f.name] = dict(value) if f.name == "model_paths" else value
        else:
            _log.warning("Setting %r has an invalid value %r: using %r", f.name, value,
                         getattr(defaults, f.name))
    return Settings(**kwargs)


def _backup_bad_file(path: Path) -> Path | None:
    backup = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        os.replace(path, backup)
    except OSError as exc:
        _log.warning("Could not keep a copy of the unreadable settings file %s: %s", path, exc)
        return None
    return backup


def load_settings(path: Path | None = None) -> Settings:
    """Read settings from ``path`` (default: ``settings.json`` in the config folder)."""
    path = path if path is not None else settings_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings()
    except OSError as exc:
        _log.warning("Could not read settings %s (%s): using defaults", path, exc)
        return Settings()
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("the top level is not an object")
    except ValueError as exc:
        backup = _backup_bad_file(path)
        _log.warning("Settings file %s is corrupt (%s): using defaults; the bad file was kept "
                     "as %s", path, exc, backup)
        return Settings()
    version = data.get("schema_version", SCHEMA_VERSION)
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        _log.warning("Settings file %s was written by a newer DLADiff (schema %d > %d): using "
                     "defaults and leaving the file unchanged", path, version, SCHEMA_VERSION)
        return Settings()
    settings = settings_from_dict(data)
    settings.schema_version = SCHEMA_VERSION
    return settings


def _atomic_write_text(dest: Path, text: str) -> None:
    # Own helper: dladiff_app/core/atomic.py did not exist when this was written.
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_settings(settings: Settings, path: Path | None = None) -> Path:
    """Write ``settings`` atomically (temp file, fsync, rename) and return the path."""
    path = path if path is not None else settings_path()
    text = json.dumps(settings.to_dict(), indent=2, sort_keys=True) + "\n"
    _atomic_write_text(path, text)
    return path
