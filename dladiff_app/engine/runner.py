"""The one entry point that protects a job: albums -> layer 1 -> per photo layer 2 -> polish ->
save -> measure on the file as written -> journal -> manifest.json + report.html.

The CLI and the GUI both call :func:`run_job`. The shields, the face detector, the identity
scorer and the device come in an :class:`EngineKit` (``engine.services.build_kit`` builds the real
one), so tests can run the real layers or swap one out without touching this orchestration.

Crash safety (see ``core.journal``): a photo is journaled ``running`` before work starts,
``writing`` with the SHA-256 of the encoded file before it is created, ``done`` after it was
measured. Output files are created with ``create_exclusive`` (temp + link): a half-written file
never appears under a final name and nothing is ever overwritten.

Tensor contract inside: photos are (3, H, W) float32 RGB in [0, 1] for layer 1 and (1, 3, H, W)
for layer 2, at full resolution, on the CPU between stages (the layers move them to the device).
"""

from __future__ import annotations

import glob
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dladiff_app import __version__
from dladiff_app.core.albums import Album, discover_inputs, group_albums
from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import Cancelled, DladiffError, JobConflictError, OutputError
from dladiff_app.core.events import (
    EventSink,
    JobCancelled,
    JobFinished,
    JobStarted,
    Notice,
    PhotoDone,
    PhotoFailed,
    PhotoSkipped,
    PhotoStarted,
)
from dladiff_app.core.jobs import ProtectJob
from dladiff_app.core.journal import Journal, PhotoEntry, sha256_bytes, sha256_file
from dladiff_app.core.results import IdentityScore, PhotoResult
from dladiff_app.core.services import JobSummary
from dladiff_app.engine.faces.types import Face, FaceDetector
from dladiff_app.engine.runner_progress import EtaTracker
from dladiff_app.engine.runner_reports import write_album_reports

log = logging.getLogger(__name__)

# (stage, step, total) reported by a layer while it works.
StepFn = Callable[[str, int, int], None]


@dataclass
class Layer2Output:
    protected: torch.Tensor            # (1, 3, H, W) float32 [0, 1], inside the eps ball
    steps_done: int
    warnings: tuple[str, ...] = ()
    note: str = ""                     # one line for the report ("what this layer did")


# images (3,H,W) list, cancel, step -> (protected list, note)
Layer1Fn = Callable[[list[torch.Tensor], CancelToken, StepFn], tuple[list[torch.Tensor], str]]
# clean (1,3,H,W), start (1,3,H,W), faces, cancel, step -> Layer2Output
Layer2Fn = Callable[[torch.Tensor, torch.Tensor, list[Face], CancelToken, StepFn], Layer2Output]
# clean (1,3,H,W), current (1,3,H,W), faces, cancel, step -> (polished, note)
PolishFn = Callable[[torch.Tensor, torch.Tensor, list[Face], CancelToken, StepFn],
                    tuple[torch.Tensor, str]]
# clean (H,W,3) float, other (H,W,3) float -> one score per available encoder
ScoreFn = Callable[[np.ndarray, np.ndarray], list[IdentityScore]]


@dataclass
class EngineKit:
    """Everything the runner needs from the ML side, already bound to a device and models.

    ``layer1``/``layer2``/``polish`` are None when unavailable; ``*_missing`` then says why and
    how to get it (shown to the user as a Notice).
    """

    device_kind: str
    device_name: str
    detector: FaceDetector | None
    score: ScoreFn
    layer1: Layer1Fn | None = None
    layer1_missing: str = ""
    layer2: Layer2Fn | None = None
    layer2_missing: str = ""
    polish: PolishFn | None = None
    models: dict[str, Any] = field(default_factory=dict)          # manifest "models" section
    model_revisions: dict[str, Any] = field(default_factory=dict)
    # Seconds of one layer-1 PGD step for one photo, measured on this kit's device (None until
    # layer 1 has run): what time estimates use instead of a table.
    layer1_step_seconds: Callable[[], float | None] | None = None


@dataclass
class _Photo:
    id: int
    path: Path
    album: Album
    key: str
    pixels: np.ndarray | None = None   # (H, W, 3) float32 RGB [0, 1] (orientation applied)
    exif: bytes | None = None


class _Run:
    """State of one run_job call (kept off the module so runs never share anything)."""

    def __init__(self, job: ProtectJob, kit: EngineKit, sink: EventSink,
                 cancel: CancelToken) -> None:
        self.job, self.kit, self.sink, self.cancel = job, kit, sink, cancel
        self.out = Path(job.output_dir)
        self.journal = Journal(self.out)
        self.done = self.failed = self.skipped = 0
        self.eta = EtaTracker(sink)
        self.t0 = time.monotonic()

    # ---------------------------------------------------------------- bookkeeping
    def fail(self, photo: _Photo, reason: str) -> None:
        self.failed += 1
        self.sink(PhotoFailed(photo.id, str(photo.path), reason))
        try:
            self.journal.set_state(photo.key, "failed", album=photo.album.name,
                                   source=str(photo.path), reason=reason)
        except OutputError as exc:
            log.warning("could not journal a failure: %s", exc)
        self.eta.photo_finished(photo.id)

    def journal_state(self, photo: _Photo, state: str, **fields: Any) -> None:
        self.journal.set_state(photo.key, state, album=photo.album.name, source=str(photo.path),
                               **fields)

    # ---------------------------------------------------------------- photos
    def finished_before(self, photo: _Photo) -> PhotoEntry | None:
        """The journal entry if this photo was protected by an earlier run and its file is
        still there, intact."""
        entry = self.journal.entry(photo.key)
        if entry is None or entry.state != "done" or not entry.output:
            return None
        out = Path(entry.output)
        if out.is_file() and sha256_file(out) == entry.sha256:
            return entry
        return None

    def written_before(self, photo: _Photo) -> Path | None:
        """A complete file written by an interrupted run (state ``writing``), found by hash."""
        entry = self.journal.entry(photo.key)
        if entry is None or entry.state != "writing" or not entry.planned or not entry.sha256:
            return None
        planned = Path(entry.planned)
        numbered = f"{glob.escape(planned.stem)}-*{glob.escape(planned.suffix)}"
        candidates = [planned, *sorted(planned.parent.glob(numbered))]
        for path in candidates:
            if path.is_file() and sha256_file(path) == entry.sha256:
                return path
        return None

    def load(self, photo: _Photo) -> bool:
        from dladiff_app.core.imageio import load_image

        try:
            loaded = load_image(photo.path)
        except DladiffError as exc:
            self.fail(photo, str(exc))
            return False
        photo.pixels = loaded.pixels
        photo.exif = loaded.exif_kept
        return True

    def protect(self, photo: _Photo, layer1_out: torch.Tensor | None,
                layer1_note: str) -> None:
        """Layer 2 + polish + save + measure for one loaded photo."""
        from dladiff_app.core.atomic import create_exclusive, next_free_path
        from dladiff_app.core.imageio import encode_image, protected_name

        assert photo.pixels is not None
        started = time.monotonic()
        s = self.job.settings
        self.sink(PhotoStarted(photo.id, str(photo.path)))
        self.journal_state(photo, "running")
        clean = torch.from_numpy(np.ascontiguousarray(photo.pixels)).permute(2, 0, 1)[None]
        current = layer1_out[None] if layer1_out is not None else clean.clone()
        layers_done = ["layer1"] if layer1_out is not None else []
        notes = {"layer1": layer1_note} if layer1_out is not None else {}
        warnings: list[str] = []
        faces: list[Face] = []
        step = self.eta.step_fn(photo.id)
        if s.layers.zeroshot:
            if self.kit.layer2 is None or self.kit.detector is None:
                warnings.append(self.kit.layer2_missing)
            else:
                faces = self.kit.detector.detect(photo.pixels)
                if not faces:
                    warnings.append(f"No face found in {photo.path.name}: the zero-shot shield "
                                    "was skipped for this photo.")
                else:
                    out2 = self.kit.layer2(clean, current, faces, self.cancel, step)
                    current = out2.protected
                    layers_done.append("layer2")
                    notes["layer2"] = out2.note
                    warnings.extend(out2.warnings)
        if ("layer1" in layers_done and "layer2" in layers_done and s.polish_steps > 0
                and self.kit.polish is not None):
            current, notes["polish"] = self.kit.polish(clean, current, faces, self.cancel, step)
            layers_done.append("polish")
        for w in warnings:
            self.sink(Notice(w, photo.id))
        self.cancel.check()
        step("save", 0, 1)
        fmt = self.job.export.format.value
        pixels = current[0].permute(1, 2, 0).clamp(0, 1).numpy()
        exif = photo.exif if self.job.export.keep_metadata else None
        data = encode_image(pixels, fmt, quality=self.job.export.quality, exif=exif)
        planned = next_free_path(protected_name(photo.path, photo.album.output_dir(self.out), fmt))
        digest = sha256_bytes(data)
        self.journal_state(photo, "writing", planned=str(planned), sha256=digest)
        written = create_exclusive(planned, data)
        step("save", 1, 1)
        self.finish(photo, written, digest, time.monotonic() - started, layers_done, notes,
                    warnings, len(faces))

    def finish(self, photo: _Photo, written: Path, digest: str, seconds: float,
               layers_done: list[str], notes: dict[str, str], warnings: list[str],
               faces: int) -> None:
        """Measure the file as written, journal it done, report it."""
        from dladiff_app.core.imageio import load_image
        from dladiff_app.core.quality import linf_255, psnr, simulate_sharing, ssim

        assert photo.pixels is not None
        step = self.eta.step_fn(photo.id)
        step("score", 0, 1)
        saved = load_image(written).pixels
        shared = simulate_sharing(saved)
        reference = _resize_like(photo.pixels, shared.shape[:2])
        s = self.job.settings
        result = PhotoResult(
            source=str(photo.path), output=str(written), width=saved.shape[1],
            height=saved.shape[0], seconds=round(seconds, 3),
            scores=tuple(self.kit.score(photo.pixels, saved)),
            scores_after_sharing=tuple(self.kit.score(reference, shared)),
            psnr=psnr(photo.pixels, saved), ssim=ssim(photo.pixels, saved),
            linf=linf_255(photo.pixels, saved), faces=faces, layers_done=tuple(layers_done),
            warnings=tuple(warnings),
            extra={
                "sha256": digest, "preset": s.preset, "eps": s.eps, "layers": s.layers.value,
                "steps": {"layer1_pgd": s.layer1_total_pgd if "layer1" in layers_done else 0,
                          "prior": s.prior_steps if "layer1" in layers_done else 0,
                          # No S_dyn update after the last PGD round (it could not change
                          # the photos): rounds - 1 updates are what ran.
                          "layer1_lora": ((s.layer1_rounds - 1) * s.layer1_lora_steps
                                          if "layer1" in layers_done else 0),
                          "layer2": s.layer2_steps if "layer2" in layers_done else 0,
                          "polish": s.polish_steps if "polish" in layers_done else 0},
                "device": self.kit.device_kind, "model_revisions": self.kit.model_revisions,
                "app_version": __version__, "layer_notes": notes,
            })
        step("score", 1, 1)
        record = _manifest_photo(result)
        self.journal_state(photo, "done", output=str(written), sha256=digest, result=record)
        self.done += 1
        self.eta.photo_finished(photo.id)
        self.sink(PhotoDone(photo.id, result))

    # ---------------------------------------------------------------- albums
    def run_album(self, index: int, album: Album, photos: list[_Photo]) -> None:
        pending: list[_Photo] = []
        for photo in photos:
            entry = self.finished_before(photo)
            if entry is not None:
                self.skipped += 1
                self.eta.photo_finished(photo.id)
                self.sink(PhotoSkipped(photo.id, str(photo.path),
                                       f"already protected in an earlier run: {entry.output}"))
                continue
            adopted = self.written_before(photo)
            if adopted is not None and self.load(photo):
                self.finish(photo, adopted, sha256_file(adopted), 0.0, [], {},
                            ["Recovered after an interruption: layers were recorded before "
                             "the crash and are not listed here."], 0)
                continue
            pending.append(photo)
        try:
            album.output_dir(self.out).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            err = OutputError(album.output_dir(self.out), exc.strerror or str(exc))
            for photo in pending:
                self.fail(photo, f"{photo.path.name}: {err}")
            return
        loaded = [p for p in pending if self.load(p)]
        layer1_out: list[torch.Tensor | None] = [None] * len(loaded)
        layer1_note = ""
        s = self.job.settings
        if loaded and s.layers.finetune:
            if self.kit.layer1 is None:
                self.sink(Notice(self.kit.layer1_missing))
            else:
                images = [torch.from_numpy(np.ascontiguousarray(p.pixels)).permute(2, 0, 1)
                          for p in loaded]
                try:
                    protected, layer1_note = self.kit.layer1(images, self.cancel,
                                                             self.eta.step_fn(None))
                except Cancelled:
                    raise
                except Exception as exc:  # typed or not, it must not cost the other albums
                    if not isinstance(exc, DladiffError):
                        log.exception("the fine-tuning shield failed on album %s", album.name)
                        exc = RuntimeError(f"internal error ({type(exc).__name__}: {exc}); "
                                           "please report it")
                    for p in loaded:
                        self.fail(p, f"{p.path.name}: the fine-tuning shield failed: {exc}")
                    return
                layer1_out = list(protected)
        self.eta.album_finished(index)
        for photo, l1 in zip(loaded, layer1_out, strict=True):
            try:
                self.protect(photo, l1, layer1_note)
            except Cancelled:
                raise
            except DladiffError as exc:
                self.fail(photo, str(exc) if photo.path.name in str(exc)
                          else f"{photo.path.name}: {exc}")
            except Exception as exc:  # a bug must not cost the rest of the batch
                log.exception("protecting %s failed", photo.path)
                self.fail(photo, f"{photo.path.name}: internal error ({type(exc).__name__}: "
                                 f"{exc}); please report it")
            photo.pixels = None  # free memory of finished photos early

    def write_reports(self, album: Album) -> None:
        if not self.job.export.write_report:
            return
        try:
            write_album_reports(self.journal, album, self.out, self.job, self.kit)
        except DladiffError as exc:
            self.sink(Notice(f"The report for album {album.name} could not be written: {exc}"))


def _resize_like(pixels: np.ndarray, hw: tuple[int, ...]) -> np.ndarray:
    """The clean photo at the size a shared copy has (so faces line up for scoring)."""
    if pixels.shape[:2] == tuple(hw):
        return pixels
    from PIL import Image

    img = Image.fromarray(np.rint(np.clip(pixels, 0, 1) * 255).astype(np.uint8))
    img = img.resize((hw[1], hw[0]), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.float32) / 255.0


def _manifest_photo(result: PhotoResult) -> dict[str, Any]:
    """The manifest's record of a photo: the PhotoResult with its ``extra`` fields lifted up."""
    d = result.to_dict()
    extra = d.pop("extra")
    d.update(extra)
    return d


def run_job(job: ProtectJob, kit: EngineKit, sink: EventSink,
            cancel: CancelToken | None = None) -> JobSummary:
    """Protect every photo of ``job``; per-photo problems become PhotoFailed events, a cancel
    becomes ``JobSummary(cancelled=True)``. Raises :class:`JobConflictError` when the output
    folder holds another job and ``job.resume`` is off, :class:`OutputError` when the output
    folder cannot be used at all (every photo is reported failed first)."""
    cancel = cancel or CancelToken()
    run = _Run(job, kit, sink, cancel)
    if run.journal.exists and not job.resume:
        raise JobConflictError(
            f"{run.out} already holds a DLADiff job journal. Resume it with --resume, or choose "
            "an empty output folder (nothing there was changed).")
    found = discover_inputs(job.inputs, recursive=job.recursive, exclude=run.out)
    albums = group_albums(found.files, job.album_mode)
    photos: list[_Photo] = []
    for album in albums:
        for path in album.photos:
            photos.append(_Photo(len(photos), path, album, str(path.resolve())))
    unusable = [(m, "the file or folder does not exist") for m in found.missing] + [
        (m, f"this folder is inside the output folder {run.out}, which is never read as input "
            "(its protected copies would be protected again): choose an output folder outside "
            "your photos") for m in found.inside_output]
    missing = [_Photo(len(photos) + i, m, Album("missing", (m,)), str(m.absolute()))
               for i, (m, _) in enumerate(unusable)]
    sink(JobStarted(len(photos) + len(missing), kit.device_name,
                    f"{len(albums)} album(s)"))
    if found.ignored:
        sink(Notice(f"Ignored {len(found.ignored)} file(s) that are not pictures, e.g. "
                    f"{found.ignored[0].name}."))
    try:
        run.journal.start_job(job)
    except OutputError as exc:
        for photo in [*photos, *missing]:
            run.failed += 1
            sink(PhotoFailed(photo.id, str(photo.path), f"{photo.path.name}: {exc}"))
        sink(JobFinished(0, run.failed, 0, time.monotonic() - run.t0))
        raise
    run.eta.plan(job.settings, [len(a.photos) for a in albums], kit.layer1 is not None,
                 kit.layer2 is not None, polish=kit.polish is not None, unusable=len(missing))
    for photo, (_, reason) in zip(missing, unusable, strict=True):
        run.fail(photo, f"{photo.path.name}: {reason}")
    current: Album | None = None
    try:
        for index, album in enumerate(albums):
            current = album
            run.run_album(index, album, [p for p in photos if p.album is album])
            run.write_reports(album)
            current = None
    except Cancelled:
        if current is not None:
            run.write_reports(current)
        sink(JobCancelled(run.done))
        return JobSummary(run.done, run.failed, run.skipped, True, str(run.out),
                          time.monotonic() - run.t0)
    seconds = time.monotonic() - run.t0
    sink(JobFinished(run.done, run.failed, run.skipped, seconds))
    return JobSummary(run.done, run.failed, run.skipped, False, str(run.out), seconds)
