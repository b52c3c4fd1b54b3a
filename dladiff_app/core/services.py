"""The engine services the front ends (GUI, CLI) are given, as protocols.

The GUI receives implementations of these at construction (composition root: ``app.py``), so GUI
tests can pass fakes and the real ones live in ``dladiff_app.engine.services``. All methods may be
slow and are called from the engine worker thread, never from the UI thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.events import EventSink
from dladiff_app.core.jobs import ProtectJob
from dladiff_app.core.presets import ProtectionSettings
from dladiff_app.core.results import IdentityScore, PhotoResult


@dataclass(frozen=True)
class DeviceSummary:
    kind: str            # "cuda" | "mps" | "cpu"
    name: str            # e.g. "NVIDIA GeForce RTX 4070" or "CPU (8 threads)"
    memory_bytes: int | None
    reason: str          # e.g. "CUDA not available: using CPU; the fine-tuning shield will be slow"
    available: tuple[str, ...] = ("cpu",)  # device kinds this machine has, e.g. ("cuda", "cpu")


@dataclass(frozen=True)
class ModelRow:
    id: str
    title: str
    purpose: str
    present: bool
    size_bytes: int | None
    license_name: str
    license_text: str
    path: str | None
    source: str          # "download" | "local" | "package" | "missing"


@dataclass(frozen=True)
class JobSummary:
    done: int
    failed: int
    skipped: int
    cancelled: bool
    output_dir: str
    seconds: float
    unprotected: int = 0  # photos finished without protection (no face found, ...)


@dataclass(frozen=True)
class FacePreview:
    """One face protected for a look before a long run; nothing is written anywhere.

    ``original`` and ``protected``: (h, w, 3) uint8 RGB crops around the largest face of the
    photo (the face box widened 2x: the whole region the zero-shot shield changes), the
    protected one exactly as an 8-bit file would hold it. ``box``: that face in crop pixels.
    ``steps`` of the ``full_steps`` a real run takes per face were done. ``face_*``: the
    visibility figures of :class:`PhotoResult`, measured on this crop; ``scores``: each
    identity encoder's verdict on the protected crop (after only ``steps`` steps).
    """

    source: str
    original: np.ndarray
    protected: np.ndarray
    box: tuple[float, float, float, float]
    steps: int
    full_steps: int
    seconds: float
    faces_in_photo: int
    face_ssim: float | None = None
    face_de_mean: float | None = None
    face_de_p95: float | None = None
    face_jnd: float | None = None
    scores: tuple[IdentityScore, ...] = ()


class ProtectService(Protocol):
    def protect(self, job: ProtectJob, sink: EventSink, cancel: CancelToken) -> JobSummary:
        """Run a whole job, reporting events to ``sink``; raises nothing for per-photo problems
        (they become PhotoFailed/PhotoSkipped events); raises ``Cancelled`` only via the summary
        (``cancelled=True``), never leaving half-written files."""
        ...

    def estimate_seconds(self, n_photos: int, settings: ProtectionSettings,
                         megapixels: float = 12.0, faces: Sequence[int] | None = None) -> float:
        """Wall-clock estimate on the current device, for the UI's live estimate. ``faces``:
        faces per photo (from :meth:`count_faces`); None assumes one face per photo."""
        ...

    def count_faces(self, paths: Sequence[Path]) -> list[int | None]:
        """Faces found in each photo (None: unreadable), for per-face estimates."""
        ...

    def measure(self, source: Path, output: Path) -> PhotoResult:
        """Figures of a protected file (e.g. an exported copy) against its clean photo."""
        ...

    def preview_face(self, source: Path, settings: ProtectionSettings, cancel: CancelToken,
                     progress: Callable[[int, int], None] | None = None) -> FacePreview:
        """The largest face of ``source`` protected with a few zero-shot steps at
        ``settings``' strength, on its face crop only (seconds, not minutes), through the
        same shield a run uses. Writes nothing. ``progress(done, total)`` after each step;
        raises ``Cancelled`` when ``cancel`` is set, ``NoFaceError`` without a face."""
        ...


class ModelService(Protocol):
    def list_models(self) -> list[ModelRow]: ...

    def download(self, model_id: str, progress: Callable[[int, int | None], None],
                 cancel: CancelToken) -> None: ...

    def use_local(self, model_id: str, path: str) -> None: ...


class DeviceService(Protocol):
    def describe(self, requested: str = "auto") -> DeviceSummary: ...
