"""Cooperative cancellation shared between a UI thread and the engine thread."""

from __future__ import annotations

import threading

from dladiff_app.core.errors import Cancelled


class CancelToken:
    """Thread-safe flag. The UI calls :meth:`cancel`; the engine calls :meth:`check` once per
    optimisation step and gets a :class:`Cancelled` exception at the next step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def reset(self) -> None:
        self._event.clear()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled()
