"""Ctrl-C and SIGTERM during a protection: stop cleanly instead of dying mid-write.

The first signal sets the job's cancel token: the engine stops at its next step, the photo in
progress waits for ``--resume``, and the manifest and report of the finished photos are written.
A second signal stops at once (``KeyboardInterrupt``); the journal still makes that resumable.
The exit code is the shell's convention for a process ended by that signal, 128 + its number
(130 for Ctrl-C, 143 for SIGTERM), so scripts see an interrupted job as interrupted.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from dladiff_app.core.cancel import CancelToken

# The signals that stop a job cleanly (SIGTERM: a service manager, `kill`, a closed session).
STOP_SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s)


@dataclass
class Stop:
    signum: int | None = None   # the first stop signal received, None while none came

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum if self.signum is not None else signal.SIGINT)

    @property
    def name(self) -> str:
        return "Ctrl-C" if self.signum in (None, signal.SIGINT) else signal.Signals(
            self.signum).name


@contextmanager
def stop_on_signals(token: CancelToken) -> Iterator[Stop]:
    """While inside, SIGINT/SIGTERM cancel ``token`` (the first) or interrupt (the second).
    Outside the main thread signals cannot be caught: nothing is installed then."""
    stop = Stop()

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.signum is not None:
            raise KeyboardInterrupt
        stop.signum = signum
        token.cancel()
        print(f"\n{stop.name}: stopping after the current step (again to stop at once)...",
              file=sys.stderr, flush=True)

    previous: dict[int, Any] = {}
    try:
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
