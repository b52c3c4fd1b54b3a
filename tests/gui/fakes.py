"""Fake engine services for GUI tests and the screenshot script.

They behave like the real ones at the boundary: real event dataclasses, real PhotoResult values,
real files written (the input's pixels re-encoded by Pillow), the cancel token checked every
"step". Scores are whatever the test configured, so the viewer test can look for those numbers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import Cancelled, JobConflictError
from dladiff_app.core.events import (
    EventSink,
    JobCancelled,
    JobFinished,
    JobStarted,
    PhotoDone,
    PhotoFailed,
    PhotoStarted,
    Progress,
)
from dladiff_app.core.jobs import OutputFormat, ProtectJob
from dladiff_app.core.presets import ProtectionSettings
from dladiff_app.core.results import IdentityScore, PhotoResult
from dladiff_app.core.services import DeviceSummary, JobSummary, ModelRow

DEFAULT_SCORES = (
    IdentityScore("arcface_buffalo_l", "cosine", 0.1234, 0.30, False),
    IdentityScore("dlib_resnet", "euclidean", 0.7321, 0.60, False),
)
DEFAULT_AFTER_SHARING = (
    IdentityScore("arcface_buffalo_l", "cosine", 0.2468, 0.30, False),
)
_EXT = {OutputFormat.PNG: "png", OutputFormat.JPEG: "jpg", OutputFormat.WEBP: "webp"}


@dataclass
class FakeProtectService:
    steps: int = 4
    step_seconds: float = 0.005
    slow_from_photo: int | None = None   # photos from this index take ``slow_steps`` steps
    slow_steps: int = 2000
    scores: tuple[IdentityScore, ...] = DEFAULT_SCORES
    after_sharing: tuple[IdentityScore, ...] = DEFAULT_AFTER_SHARING
    psnr: float = 41.25
    seconds_per_step_mp: float = 0.5
    jobs: list[ProtectJob] = field(default_factory=list)
    threads: list[str] = field(default_factory=list)
    cancel_seen_at: float | None = None

    def protect(self, job: ProtectJob, sink: EventSink, cancel: CancelToken) -> JobSummary:
        self.jobs.append(job)
        self.threads.append(threading.current_thread().name)
        # Like the real runner: a folder that holds an earlier job is only reused on resume.
        marker = job.output_dir / ".fake-journal"
        if marker.exists() and not job.resume:
            raise JobConflictError(f"{job.output_dir} already holds a DLADiff job journal.")
        job.output_dir.mkdir(parents=True, exist_ok=True)
        marker.touch()
        t0 = time.monotonic()
        n = len(job.inputs)
        sink(JobStarted(total_photos=n, device="Fake CPU"))
        done = failed = 0
        try:
            for i, src in enumerate(job.inputs):
                sink(PhotoStarted(i, str(src)))
                try:
                    with Image.open(src) as img:
                        rgb = img.convert("RGB")
                except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
                    sink(PhotoFailed(i, str(src), f"{src.name}: not a readable image ({exc})"))
                    failed += 1
                    continue
                steps = self.steps
                if self.slow_from_photo is not None and i >= self.slow_from_photo:
                    steps = self.slow_steps
                for step in range(steps):
                    self._check(cancel)
                    time.sleep(self.step_seconds)
                    overall = (i + (step + 1) / steps) / n
                    sink(Progress("layer2", step + 1, steps, overall,
                                  eta_s=(steps - step - 1) * self.step_seconds, photo_id=i))
                out_dir = job.output_dir / src.parent.name
                out_dir.mkdir(parents=True, exist_ok=True)
                out = out_dir / f"{src.stem}-protected.{_EXT[job.export.format]}"
                rgb.save(out, quality=job.export.quality)
                sink(PhotoDone(i, PhotoResult(
                    source=str(src), output=str(out), width=rgb.width, height=rgb.height,
                    seconds=time.monotonic() - t0, scores=self.scores,
                    scores_after_sharing=self.after_sharing, psnr=self.psnr, linf=0.0, faces=1,
                    layers_done=("zeroshot",))))
                done += 1
        except Cancelled:
            sink(JobCancelled(done))
            return JobSummary(done, failed, 0, True, str(job.output_dir), time.monotonic() - t0)
        seconds = time.monotonic() - t0
        sink(JobFinished(done, failed, 0, seconds))
        return JobSummary(done, failed, 0, False, str(job.output_dir), seconds)

    def _check(self, cancel: CancelToken) -> None:
        if cancel.cancelled and self.cancel_seen_at is None:
            self.cancel_seen_at = time.monotonic()
        cancel.check()

    def estimate_seconds(self, n_photos: int, settings: ProtectionSettings,
                         megapixels: float = 12.0) -> float:
        return n_photos * settings.layer2_steps * self.seconds_per_step_mp * megapixels


def default_rows() -> list[ModelRow]:
    return [
        ModelRow("dlib", "dlib face recognition", "Offline zero-shot shield", True, 22_000_000,
                 "CC0", "Public domain.", "/pkg/dlib.dat", "package"),
        ModelRow("buffalo_l", "insightface buffalo_l", "Zero-shot shield (ArcFace)", False,
                 300_000, "Non-commercial research", "insightface models: research only.", None,
                 "missing"),
    ]


@dataclass
class FakeModelService:
    """Downloads write a real file in chunks into ``folder``, reporting progress."""

    folder: Path
    rows: list[ModelRow] = field(default_factory=default_rows)
    chunk_seconds: float = 0.01
    chunks: int = 10
    downloads: list[str] = field(default_factory=list)
    fail_with: str | None = None

    def list_models(self) -> list[ModelRow]:
        return list(self.rows)

    def download(self, model_id: str, progress: Callable[[int, int | None], None],
                 cancel: CancelToken) -> None:
        row = next(r for r in self.rows if r.id == model_id)
        total = row.size_bytes or 1000
        chunk = total // self.chunks
        self.folder.mkdir(parents=True, exist_ok=True)
        part = self.folder / f"{model_id}.part"
        with part.open("wb") as fh:
            for k in range(self.chunks):
                cancel.check()
                if self.fail_with:
                    raise OSError(self.fail_with)
                fh.write(bytes(chunk))
                progress((k + 1) * chunk, total)
                time.sleep(self.chunk_seconds)
        final = part.rename(self.folder / f"{model_id}.onnx")
        self.downloads.append(model_id)
        self._set(model_id, present=True, path=str(final), source="download")

    def use_local(self, model_id: str, path: str) -> None:
        self._set(model_id, present=True, path=path, source="local")

    def _set(self, model_id: str, **changes: object) -> None:
        self.rows = [replace(r, **changes) if r.id == model_id else r  # type: ignore[arg-type]
                     for r in self.rows]


@dataclass
class FakeDeviceService:
    summary: DeviceSummary = DeviceSummary("cpu", "Fake CPU", None, "")
    requested: list[str] = field(default_factory=list)

    def describe(self, requested: str = "auto") -> DeviceSummary:
        self.requested.append(requested)
        return self.summary
