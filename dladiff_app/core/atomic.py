"""Crash-safe file writes: a reader never sees a half-written file under the final name.

Every write goes to a hidden temporary file in the destination folder (same file system, so the
final rename is atomic), is flushed and fsynced, and only then appears under its real name.
``create_exclusive`` additionally never replaces an existing file, even when two writers race
for the same name: it publishes with ``os.link`` (which fails if the name exists) and falls back
to an ``O_EXCL`` reservation plus ``os.replace`` on file systems without hard links.

Failures become :class:`OutputError` with a reason a person can act on ("the disk is full").
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path

from dladiff_app.core.errors import OutputError

# How many "-N" names create_exclusive / next_free_path try before giving up.
MAX_NAME_ATTEMPTS = 10_000

# errno values meaning "this file system cannot make hard links": use the O_EXCL fallback.
_NO_LINK_ERRNOS = frozenset(
    e for e in (errno.EPERM, getattr(errno, "ENOTSUP", None), getattr(errno, "EOPNOTSUPP", None),
                getattr(errno, "ENOSYS", None), errno.EMLINK, errno.EXDEV)
    if e is not None
)


def describe_os_error(exc: BaseException) -> str:
    """A short reason for a failed write that tells the user what to change."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or code == getattr(errno, "EDQUOT", -1):
        return "the disk is full: free some space or choose another output folder"
    if code in (errno.EACCES, errno.EPERM) or isinstance(exc, PermissionError):
        return "permission denied: choose an output folder you can write to"
    if code == errno.EROFS:
        return "the output folder is on a read-only disk: choose another output folder"
    if code == errno.ENOENT:
        return "the output folder does not exist (was the drive removed?)"
    if code == errno.ENAMETOOLONG:
        return "the file name is too long: choose a shorter output folder or name"
    if code == errno.EISDIR:
        return "a folder with that name already exists"
    detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return f"the system refused the write ({detail})"


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself; not possible on every OS (Windows cannot open folders)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(folder, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _ensure_folder(dest: Path) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(dest, describe_os_error(exc)) from exc


# Temporary names are ".<name>.<12 hex>.tmp": the name part is cut so the whole stays within the
# 255 bytes most file systems allow, whatever the final name's length.
TEMP_NAME = re.compile(r"^\..*\.[0-9a-f]{12}\.tmp$", re.DOTALL)
_TEMP_NAME_BYTES = 200


def shortened(name: str) -> str:
    """``name`` as the temporary name of a file written under it holds it (long names cut)."""
    while len(os.fsencode(name)) > _TEMP_NAME_BYTES:
        name = name[:-1]
    return name


def temp_target(name: str) -> str | None:
    """The final name (as :func:`shortened`) a temporary file of this module was written for,
    or None when ``name`` is not named like one."""
    return name[1:-len(".0123456789ab.tmp")] if TEMP_NAME.match(name) else None


def remove_stale_temps(folder: Path, owned: Callable[[str], bool] | None = None) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder`` (names as written by this
    module). ``owned`` (given a :func:`temp_target`) says which final names are the caller's,
    so a user's file that merely looks like a temporary one is left alone. Only call it while
    no writer can be active there (the job folder is locked). Returns what was removed."""
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        target = temp_target(name)
        if target is not None and (owned is None or owned(target)):
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                _remove_quietly(path)
                removed.append(path)
    return removed


def _write_temp(dest: Path, data: bytes) -> Path:
    """Write ``data`` to a new hidden file beside ``dest``, fsynced; returns its path.

    The temp file is created with mode 0o666 so the umask decides the final permissions, like
    any other file the user creates. On failure the temp file is removed and OSError propagates.
    """
    for _ in range(100):
        tmp = dest.with_name(f".{shortened(dest.name)}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
        except FileExistsError:
            continue
        break
    else:  # pragma: no cover - 100 collisions of 48 random bits do not happen
        raise FileExistsError(errno.EEXIST, "no free temporary name", str(dest))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        _remove_quietly(tmp)
        raise
    return tmp


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` atomically, replacing any existing file.

    Creates missing parent folders. Raises :class:`OutputError` (temp file removed, ``dest``
    untouched) on any OS failure.
    """
    dest = Path(dest)
    _ensure_folder(dest)
    tmp: Path | None = None
    try:
        tmp = _write_temp(dest, data)
        os.replace(tmp, dest)
        tmp = None
    except OSError as exc:
        raise OutputError(dest, describe_os_error(exc)) from exc
    finally:
        if tmp is not None:
            _remove_quietly(tmp)
    _fsync_dir(dest.parent)


def atomic_write_text(dest: Path, text: str, encoding: str = "utf-8") -> None:
    """Text version of :func:`atomic_write_bytes` (no newline translation)."""
    atomic_write_bytes(dest, text.encode(encoding))


def _numbered(path: Path, n: int) -> Path:
    return path if n == 1 else path.with_name(f"{path.stem}-{n}{path.suffix}")


def _free_names(path: Path) -> Callable[[], Path]:
    """Successive candidate names: ``path``, ``stem-2.ext``, ... skipping names that exist."""
    state = {"n": 0}

    def next_candidate() -> Path:
        while state["n"] < MAX_NAME_ATTEMPTS:
            state["n"] += 1
            candidate = _numbered(path, state["n"])
            if not os.path.lexists(candidate):
                return candidate
        raise OutputError(path, f"more than {MAX_NAME_ATTEMPTS} files with this name already "
                                "exist: choose another output folder")

    return next_candidate


def next_free_path(path: Path) -> Path:
    """``path`` if nothing exists there (a broken link counts as existing), else the first free
    ``name-2.ext``, ``name-3.ext``, ... A name can of course be taken right after this returns:
    writers that must never overwrite use :func:`create_exclusive`."""
    return _free_names(Path(path))()


def create_exclusive(dest: Path, data: bytes) -> Path:
    """Write ``data`` atomically under ``dest`` or the first free numbered name; never replaces an
    existing file, even when another process writes the same name at the same time.

    Returns the path actually written. Creates missing parent folders. Raises
    :class:`OutputError` on failure (no temp file or partial output left behind).
    """
    dest = Path(dest)
    _ensure_folder(dest)
    candidates = _free_names(dest)
    try:
        tmp = _write_temp(dest, data)
    except OSError as exc:
        raise OutputError(dest, describe_os_error(exc)) from exc
    try:
        final = _publish(tmp, candidates)
    except OSError as exc:
        raise OutputError(dest, describe_os_error(exc)) from exc
    finally:
        _remove_quietly(tmp)  # after a link the temp is a second name; after replace it is gone
    _fsync_dir(dest.parent)
    return final


def _publish(tmp: Path, candidates: Callable[[], Path]) -> Path:
    while True:
        target = candidates()
        try:
            os.link(tmp, target)
            return target
        except FileExistsError:
            continue  # another writer took this name between the check and the link
        except OSError as exc:
            if exc.errno not in _NO_LINK_ERRNOS:
                raise
        # No hard links here (FAT, some network shares): reserve the name, then replace it.
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        try:
            os.replace(tmp, target)
        except BaseException:
            _remove_quietly(target)  # drop our empty reservation, never someone else's file
            raise
        return target
