"""The one long-lived engine thread and the adapter between engine callbacks and Qt signals.

The engine is plain Python: ``ProtectService.protect(job, sink, cancel)`` calls ``sink`` with
frozen event dataclasses on the engine thread. The worker re-emits each as ``Signal(object)``,
which Qt queues to the UI thread. Cancelling sets the ``CancelToken`` directly from the UI
thread; the engine raises ``Cancelled`` at its next step. The thread is created once, so models
loaded by the services stay warm between jobs. Shutdown: cancel, ``quit()``, ``wait()``; never
``terminate()``.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QThread, QThreadPool, Signal, Slot

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import DladiffError
from dladiff_app.core.jobs import ProtectJob
from dladiff_app.core.services import ProtectService

# Every thread and pool the GUI starts registers here, so tests can prove none is left running.
_log = logging.getLogger(__name__)
_TRACKED_THREADS: weakref.WeakSet[QThread] = weakref.WeakSet()
_TRACKED_POOLS: weakref.WeakSet[QThreadPool] = weakref.WeakSet()


def track_pool(pool: QThreadPool) -> QThreadPool:
    _TRACKED_POOLS.add(pool)
    return pool


def running_threads() -> list[str]:
    """Names of GUI-started threads still running (empty after a clean shutdown)."""
    names = []
    for thread in list(_TRACKED_THREADS):
        try:
            if thread.isRunning():
                names.append(thread.objectName() or "QThread")
        except RuntimeError:  # C++ object already deleted: not running
            continue
    for pool in list(_TRACKED_POOLS):
        try:
            if pool.activeThreadCount() > 0:
                names.append(pool.objectName() or "QThreadPool")
        except RuntimeError:
            continue
    return names


def describe_error(exc: BaseException) -> str:
    """A sentence for the user: our typed errors already are one; others get their type."""
    if isinstance(exc, DladiffError):
        return str(exc)
    return f"Unexpected error ({type(exc).__name__}): {exc}"


class _EngineWorker(QObject):
    """Lives on the engine thread; its slots run there."""

    engine_event = Signal(object)
    job_finished = Signal(object)   # JobSummary
    job_crashed = Signal(str)
    task_done = Signal(int, object)
    task_failed = Signal(int, str)

    def __init__(self, protect: ProtectService) -> None:
        super().__init__()
        self._protect = protect

    @Slot(object, object)
    def run_job(self, job: ProtectJob, cancel: CancelToken) -> None:
        try:
            summary = self._protect.protect(job, self.engine_event.emit, cancel)
        except Exception as exc:  # noqa: BLE001 - the UI must hear about every failure
            _log.exception("protect() raised")
            self.job_crashed.emit(describe_error(exc))
            return
        self.job_finished.emit(summary)

    @Slot(int, object)
    def run_task(self, task_id: int, fn: Callable[[], Any]) -> None:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001
            self.task_failed.emit(task_id, describe_error(exc))
            return
        self.task_done.emit(task_id, result)


class EngineThread(QObject):
    """Owns the engine thread. Use from the UI thread only.

    Signals (delivered on the UI thread): ``engine_event(Event)`` for each engine event,
    ``job_finished(JobSummary)``, ``job_crashed(str)`` when ``protect`` itself raised.
    ``submit`` runs any other short engine call (estimates, model list, downloads, exports) on
    the same thread, in order, and calls back on the UI thread.
    """

    engine_event = Signal(object)
    job_finished = Signal(object)
    job_crashed = Signal(str)
    _request_job = Signal(object, object)
    _request_task = Signal(int, object)

    def __init__(self, protect: ProtectService, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._thread = QThread()
        self._thread.setObjectName("dladiff-engine")
        _TRACKED_THREADS.add(self._thread)
        self._worker = _EngineWorker(protect)
        self._worker.moveToThread(self._thread)
        self._request_job.connect(self._worker.run_job)
        self._request_task.connect(self._worker.run_task)
        self._worker.engine_event.connect(self.engine_event)
        self._worker.job_finished.connect(self._on_job_finished)
        self._worker.job_crashed.connect(self._on_job_crashed)
        self._worker.task_done.connect(self._on_task_done)
        self._worker.task_failed.connect(self._on_task_failed)
        self._cancel: CancelToken | None = None
        self._tasks: dict[int, tuple[Callable[[Any], object], Callable[[str], object] | None]] = {}
        self._task_tokens: dict[int, CancelToken] = {}
        self._next_task = 0
        self._thread.start()

    # ------------------------------------------------------------------ jobs
    @property
    def job_running(self) -> bool:
        return self._cancel is not None

    def start_job(self, job: ProtectJob) -> None:
        if self._cancel is not None:
            raise RuntimeError("A protection job is already running")
        self._cancel = CancelToken()
        self._request_job.emit(job, self._cancel)

    def cancel_job(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()

    def _on_job_finished(self, summary: object) -> None:
        self._cancel = None
        self.job_finished.emit(summary)

    def _on_job_crashed(self, message: str) -> None:
        self._cancel = None
        self.job_crashed.emit(message)

    # ------------------------------------------------------------------ tasks
    def submit(self, fn: Callable[[], Any], on_done: Callable[[Any], object],
               on_error: Callable[[str], object] | None = None,
               cancel: CancelToken | None = None) -> int:
        """Run ``fn()`` on the engine thread; ``on_done(result)`` or ``on_error(message)`` on
        the UI thread. ``cancel`` (if the task honours one) is set on shutdown."""
        self._next_task += 1
        task_id = self._next_task
        self._tasks[task_id] = (on_done, on_error)
        if cancel is not None:
            self._task_tokens[task_id] = cancel
        self._request_task.emit(task_id, fn)
        return task_id

    def _on_task_done(self, task_id: int, result: object) -> None:
        self._task_tokens.pop(task_id, None)
        callbacks = self._tasks.pop(task_id, None)
        if callbacks is not None:
            callbacks[0](result)

    def _on_task_failed(self, task_id: int, message: str) -> None:
        self._task_tokens.pop(task_id, None)
        callbacks = self._tasks.pop(task_id, None)
        if callbacks is not None and callbacks[1] is not None:
            callbacks[1](message)

    @property
    def busy(self) -> bool:
        return self._cancel is not None or bool(self._tasks)

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        """Cancel whatever runs, let the engine reach its next check, and join the thread."""
        self.cancel_job()
        for token in self._task_tokens.values():
            token.cancel()
        self._tasks.clear()
        if self._thread.isRunning():
            self._thread.quit()
            self._thread.wait()
