"""Fake engine services for GUI tests and the screenshot script.

They behave like the real ones at the boundary: real event dataclasses, real PhotoResult values,
real files written (the input's pixels re-encoded by Pillow), the cancel token checked every
"step". Scores are whatever the test configured, so the viewer test can look for those numbers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import Cancelled, JobConflictError, NoFaceError
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
from dladiff_app.core.results import FaceResult, IdentityScore, PhotoResult
from dladiff_app.core.services import DeviceSummary, FacePreview, JobSummary, ModelRow
from dladiff_app.core.visibility import face_visibility

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
    # Faces per photo by file name (others: one); group photos get one box per face.
    face_counts: dict[str, int] = field(default_factory=dict)
    counted: list[str] = field(default_factory=list)
    write_reports: bool = True
    # Levels of +-noise written into the face boxes (0: the output holds the input's pixels).
    face_noise: int = 0
    # Preview calls: (photo, settings, engine thread name).
    previews: list[tuple[Path, ProtectionSettings, str]] = field(default_factory=list)
    preview_steps: int = 12

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
        results: dict[Path, list[PhotoResult]] = {}
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
                n_faces = self.face_counts.get(src.name, 1)
                faces = fake_faces(rgb.width, rgb.height, n_faces, self.scores,
                                   self.after_sharing)
                clean = np.asarray(rgb)
                changed = with_face_noise(clean, [f.box for f in faces], self.face_noise, i)
                Image.fromarray(changed).save(out, quality=job.export.quality)
                with Image.open(out) as written:
                    vis = face_visibility(clean, np.asarray(written.convert("RGB")),
                                          [f.box for f in faces])
                result = PhotoResult(
                    source=str(src), output=str(out), width=rgb.width, height=rgb.height,
                    seconds=time.monotonic() - t0, scores=self.scores,
                    scores_after_sharing=self.after_sharing, psnr=self.psnr, linf=0.0,
                    faces=n_faces, per_face=faces, face_ssim=vis.ssim if vis else None,
                    face_de_mean=vis.de_mean if vis else None,
                    face_de_p95=vis.de_p95 if vis else None,
                    layers_done=(("layer2",) if job.settings.layers.zeroshot else ())
                    + (("layer1",) if job.settings.layers.finetune else ()))
                results.setdefault(out_dir, []).append(result)
                sink(PhotoDone(i, result))
                done += 1
        except Cancelled:
            sink(JobCancelled(done))
            return JobSummary(done, failed, 0, True, str(job.output_dir), time.monotonic() - t0)
        if self.write_reports:
            for folder, album in results.items():
                write_fake_report(folder, job, album)
        seconds = time.monotonic() - t0
        sink(JobFinished(done, failed, 0, seconds))
        return JobSummary(done, failed, 0, False, str(job.output_dir), seconds)

    def _check(self, cancel: CancelToken) -> None:
        if cancel.cancelled and self.cancel_seen_at is None:
            self.cancel_seen_at = time.monotonic()
        cancel.check()

    def estimate_seconds(self, n_photos: int, settings: ProtectionSettings,
                         megapixels: float = 12.0, faces: Sequence[int] | None = None) -> float:
        n_faces = sum(faces) if faces is not None else n_photos
        return n_faces * settings.layer2_steps * self.seconds_per_step_mp * megapixels

    def count_faces(self, paths: Sequence[Path]) -> list[int | None]:
        self.counted.extend(Path(p).name for p in paths)
        return [self.face_counts.get(Path(p).name, 1) if Path(p).is_file() else None
                for p in paths]

    def measure(self, source: Path, output: Path) -> PhotoResult:
        """Real image figures of ``output`` vs ``source`` (core.quality); the identity score is
        derived from the measured PSNR, so a lossy copy reads differently from the PNG."""
        from dladiff_app.core.imageio import load_image
        from dladiff_app.core.quality import linf_255, psnr, ssim

        clean, saved = load_image(source).pixels, load_image(output).pixels
        value = round(min(1.0, psnr(clean, saved) / 100), 4) if clean.shape == saved.shape else 0.0
        score = IdentityScore("dlib", "euclidean", value, 0.6, value < 0.6)
        return PhotoResult(source=str(source), output=str(output), width=saved.shape[1],
                           height=saved.shape[0], seconds=0.0, scores=(score,),
                           psnr=psnr(clean, saved), ssim=ssim(clean, saved),
                           linf=linf_255(clean, saved), faces=1)


    def preview_face(self, source: Path, settings: ProtectionSettings, cancel: CancelToken,
                     progress: Callable[[int, int], None] | None = None) -> FacePreview:
        """The (small) test photo as the crop, changed by a random +-eps pattern inside its
        fake face box; figures from core.visibility on those pixels. Steps sleep and check
        ``cancel`` like the real shield; nothing is written."""
        self.previews.append((Path(source), settings, threading.current_thread().name))
        if self.face_counts.get(Path(source).name, 1) == 0:
            raise NoFaceError(f"No face found in {Path(source).name}: there is no face to "
                              "preview. Choose a photo with a face.")
        with Image.open(source) as img:
            pixels = np.asarray(img.convert("RGB"))
        h, w = pixels.shape[:2]
        box = fake_faces(w, h, 1, (), ())[0].box
        for step in range(self.preview_steps):
            self._check(cancel)
            time.sleep(self.step_seconds)
            if progress is not None:
                progress(step + 1, self.preview_steps)
        protected = with_face_noise(pixels, [box], int(settings.eps), 0)
        vis = face_visibility(pixels, protected, [box])
        return FacePreview(source=str(source), original=pixels.copy(), protected=protected,
                           box=box, steps=self.preview_steps,
                           full_steps=settings.layer2_steps, seconds=0.5,
                           faces_in_photo=self.face_counts.get(Path(source).name, 1),
                           face_ssim=vis.ssim if vis else None,
                           face_de_mean=vis.de_mean if vis else None,
                           face_de_p95=vis.de_p95 if vis else None, scores=self.scores)


def with_face_noise(pixels: np.ndarray, boxes: Sequence[Sequence[float]], levels: int,
                    seed: int) -> np.ndarray:
    """``pixels`` (uint8) with a random +-``levels`` change inside each box (a real change the
    figures can measure); unchanged when ``levels`` is 0."""
    out = pixels.copy()
    if levels <= 0:
        return out
    rng = np.random.default_rng(seed)
    for x0, y0, x1, y1 in boxes:
        ys, xs = slice(int(y0), int(y1)), slice(int(x0), int(x1))
        noise = rng.choice([-levels, levels], out[ys, xs].shape)
        out[ys, xs] = np.clip(out[ys, xs].astype(int) + noise, 0, 255).astype(np.uint8)
    return out


def fake_faces(width: int, height: int, n: int, scores: tuple[IdentityScore, ...],
               after: tuple[IdentityScore, ...]) -> tuple[FaceResult, ...]:
    """``n`` face boxes side by side across the middle of the photo."""
    w = width / max(1, n)
    return tuple(FaceResult(box=(i * w + w * 0.2, height * 0.3, i * w + w * 0.8, height * 0.7),
                            scores=scores, scores_after_sharing=after) for i in range(n))


def write_fake_report(folder: Path, job: ProtectJob, results: list[PhotoResult]) -> None:
    """manifest.json + report.html the way the runner writes them (core.manifest, core.report)."""
    from dladiff_app.core.atomic import atomic_write_text
    from dladiff_app.core.manifest import build_manifest, manifest_text
    from dladiff_app.core.report_html import render_report

    s = job.settings
    photos = []
    for r in results:
        record = r.to_dict()
        record.pop("extra")
        record.update(sha256="0" * 64, preset=s.preset, eps=s.eps, layers=s.layers.value,
                      steps={"layer1_pgd": 0, "prior": 0, "layer1_lora": 0,
                             "layer2": s.layer2_steps, "polish": 0}, device="cpu", model_revisions={},
                      app_version="fake")
        photos.append(record)
    doc = build_manifest(
        album=folder.name,
        job={"preset": s.preset, "eps": s.eps, "layers": s.layers.value, "settings": s.to_dict(),
             "export": {"format": job.export.format.value, "quality": job.export.quality,
                        "keep_metadata": job.export.keep_metadata}},
        device={"kind": "cpu", "name": "Fake CPU"},
        models={"sd_pipeline": None, "detector": "fake", "encoders": [{"name": "dlib"}]},
        photos=photos, failed=[])
    atomic_write_text(folder / "manifest.json", manifest_text(doc))
    atomic_write_text(folder / "report.html", render_report(doc))


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
