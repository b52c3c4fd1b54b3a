"""Events the engine reports while it works (frozen, thread-safe to hand across threads).

The engine calls an ``EventSink`` (any callable taking one event). The CLI prints them, the
GUI's engine thread re-emits them as Qt signals. ``photo_id`` is the photo's index in the job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dladiff_app.core.results import PhotoResult


@dataclass(frozen=True)
class JobStarted:
    """``total_photos`` counts every item the job reports on, ``unusable`` of them inputs that
    are no photo of any album (missing, unreadable folders): each gets its PhotoFailed."""

    total_photos: int
    device: str
    message: str = ""
    unusable: int = 0


@dataclass(frozen=True)
class PhotoStarted:
    photo_id: int
    source: str


@dataclass(frozen=True)
class Progress:
    """``stage`` is one of ``load, prior, layer1, layer2, polish, score, save``.
    ``step``/``total`` count within the stage; ``overall`` is the job's fraction in [0, 1];
    ``eta_s`` the estimated seconds left for the job (None until known)."""

    stage: str
    step: int
    total: int
    overall: float
    eta_s: float | None = None
    photo_id: int | None = None
    message: str = ""


@dataclass(frozen=True)
class PhotoDone:
    photo_id: int
    result: PhotoResult


@dataclass(frozen=True)
class PhotoFailed:
    photo_id: int
    source: str
    reason: str


@dataclass(frozen=True)
class PhotoUnprotected:
    """The photo was finished but no shield could change it (no face found for the zero-shot
    shield, or that shield is missing, and the fine-tuning shield did not run). It is *not*
    protected; ``output`` is set only when the user asked to export such photos (named
    ``-unprotected``)."""

    photo_id: int
    source: str
    reason: str
    output: str | None = None


@dataclass(frozen=True)
class PhotoSkipped:
    """Nothing was done to the photo in this run. ``result`` is the earlier protection at the
    same settings when the photo was protected before (so a front end can show it as protected)."""

    photo_id: int
    source: str
    reason: str
    result: PhotoResult | None = None


@dataclass(frozen=True)
class Notice:
    """A warning worth showing that does not stop the photo (e.g. no face: layer 2 skipped)."""

    message: str
    photo_id: int | None = None


@dataclass(frozen=True)
class JobFinished:
    done: int
    failed: int
    skipped: int
    seconds: float
    unprotected: int = 0  # finished without any shield changing them (see PhotoUnprotected)


@dataclass(frozen=True)
class JobCancelled:
    done: int


Event = (JobStarted | PhotoStarted | Progress | PhotoDone | PhotoFailed | PhotoUnprotected
         | PhotoSkipped | Notice | JobFinished | JobCancelled)
EventSink = Callable[[Event], None]
