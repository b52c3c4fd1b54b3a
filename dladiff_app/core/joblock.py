"""One process at a time per output folder: an exclusive, kernel-held lock on the job folder.

Why a kernel lock (``fcntl.flock`` / ``msvcrt.locking``) and not a "lock file exists" check: the
operating system drops the lock the moment its holder dies, ``kill -9`` included, so a stale lock
can never block a folder, and two processes can never both believe they hold it. The file itself
(``OUT/.dladiff-lock``) only carries the holder's PID so a refused process can say who holds it;
it is left in place after a run (removing it could race with the next holder).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import TracebackType

from dladiff_app.core.atomic import describe_os_error
from dladiff_app.core.errors import JobLockedError, OutputError

LOCK_NAME = ".dladiff-lock"


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` without waiting; False when another process holds it."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return "another process"
    return f"process {text[0]}" if text and text[0].isdigit() else "another process"


class JobLock:
    """``with JobLock(out):`` holds ``out`` for this process; raises :class:`JobLockedError`
    naming the holder's PID when another live process holds it, :class:`OutputError` when the
    folder cannot be created or the lock file cannot be opened."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(self.path, describe_os_error(exc)) from exc
        if not _try_lock(fd):
            os.close(fd)
            raise JobLockedError(
                f"{self.out_dir} is in use by {_holder(self.path)}, which is protecting photos "
                "into it right now. Wait for it to finish (or stop it), or choose another output "
                "folder; nothing was changed.")
        try:  # record who holds it (a refused process reads this to name us)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        except OSError:
            pass  # the lock holds without the note
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the kernel lock
            self._fd = None

    def __enter__(self) -> JobLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
