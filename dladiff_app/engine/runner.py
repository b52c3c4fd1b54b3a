"""The one entry point that protects a job: albums -> layer 1 -> per photo layer 2 -> polish ->
save -> measure on the file as written -> journal -> manifest.json + report.html.

The CLI and the GUI both call :func:`run_job`. The shields, the face detector, the identity
scorer and the device come in an :class:`EngineKit` (``engine.services.build_kit`` builds the real
one), so tests can run the real layers or swap one out without touching this orchestration.

Crash safety (see ``core.journal``): the job folder is locked for the whole run (``core.joblock``);
a photo is journaled ``running`` before work starts, ``writing`` with the SHA-256 of the encoded
file and its complete measured result before the file is created, ``done`` after. Output files
are created with ``create_exclusive`` (temp + link): a half-written file never appears under a
final name and nothing is ever overwritten; temporaries of a killed run are removed on resume.

Honest statuses: a photo that no shield changed (no face found and no fine-tuning shield) is
``unprotected``, never written as ``-protected`` (only exported as ``-unprotected`` on request).

Memory: without the fine-tuning shield an album streams (one photo decoded at a time); with it,
the album's photos are decoded together because that shield works on the whole album.

Tensor contract inside: photos are (3, H, W) float32 RGB in [0, 1] for layer 1 and (1, 3, H, W)
for layer 2, at full resolution, on the CPU between stages (the layers move them to the device).
"""

from __future__ import annotations

import glob
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dladiff_app import __version__
from dladiff_app.core.albums import (
    Album,
    Discovery,
    check_output_folder,
    discover_inputs,
    group_albums,
)
from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import (
    Cancelled,
    DladiffError,
    JobConflictError,
    NothingToProtectError,
    OutputError,
)
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
    PhotoUnprotected,
)
from dladiff_app.core.hashing import sha256_file
from dladiff_app.core.jobs import AlbumMode, ProtectJob
from dladiff_app.core.journal import (
    Journal,
    PhotoEntry,
    copy_key,
    copy_suffix,
    protection_key,
    sha256_bytes,
)
from dladiff_app.core.results import IdentityScore, PhotoResult, result_from_record
from dladiff_app.core.services import JobSummary
from dladiff_app.engine.face_results import FaceScoreFn, measure_saved, resize_like
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


@dataclass
class Layer1Output:
    protected: list[torch.Tensor]      # (3, H, W) float32 [0, 1] per photo, inside the eps ball
    note: str = ""                     # one line for the report ("what this layer did")
    warnings: tuple[str, ...] = ()     # said to the user for every photo (e.g. memory step-downs)
    # The manifest's ``layer1`` section of every photo of the album: objective, budget, step,
    # per-epoch losses (``Layer1Session.protect_album`` fills it).
    record: dict[str, Any] = field(default_factory=dict)


# images (3,H,W) list, cancel, step -> Layer1Output
Layer1Fn = Callable[[list[torch.Tensor], CancelToken, StepFn], Layer1Output]
# clean (1,3,H,W), start (1,3,H,W; may be clean itself: read only), faces, cancel, step ->
# Layer2Output
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
    # Said once per job, before the photos (e.g. "SFace is not installed: ...").
    notices: tuple[str, ...] = ()
    models: dict[str, Any] = field(default_factory=dict)          # manifest "models" section
    model_revisions: dict[str, Any] = field(default_factory=dict)
    # Seconds of one layer-1 PGD step for one photo, measured on this kit's device (None until
    # layer 1 has run): what time estimates use instead of a table.
    layer1_step_seconds: Callable[[], float | None] | None = None
    # The loaded Stable Diffusion behind ``layer1`` (a ``WarmBase``), for the next kit to reuse.
    layer1_warm: Any = None
    # Every face's scores (group photos); when set, ``score`` is not called: the subject's
    # scores are the first face's of these.
    score_faces: FaceScoreFn | None = None


@dataclass
class _Photo:
    id: int
    path: Path
    album: Album
    key: str                           # journal key; a path key until the file was hashed
    source_sha256: str | None = None
    what: str | None = None            # the key without model versions (core.journal)
    pixels: np.ndarray | None = None   # (H, W, 3) float32 RGB [0, 1] (orientation applied)
    exif: bytes | None = None
    notes: tuple[str, ...] = ()        # how the file was read (an animation's first frame)


@dataclass
class _Outcome:
    """What the shields did to one photo, before it is saved."""

    current: torch.Tensor              # (1, 3, H, W) float32 [0, 1]
    layers_done: list[str]
    notes: dict[str, str]
    warnings: list[str]
    faces: int
    seconds: float = 0.0


class _Run:
    """State of one run_job call (kept off the module so runs never share anything)."""

    def __init__(self, job: ProtectJob, kit: EngineKit, sink: EventSink,
                 cancel: CancelToken) -> None:
        self.job, self.kit, self.sink, self.cancel = job, kit, sink, cancel
        # Absolute, so journaled paths do not depend on where the process was started.
        self.out = Path(job.output_dir).absolute()
        self.journal = Journal(self.out)
        self.done = self.failed = self.skipped = self.unprotected = 0
        self.eta = EtaTracker(sink)
        self.t0 = time.monotonic()
        self.layer1_record: dict[str, Any] = {}  # the current album's (Layer1Output.record)
        s, e = job.settings, job.export
        shields = {"layer1": kit.layer1 is not None, "layer2": kit.layer2 is not None}
        self.key_parts = (
            s.to_dict(),
            {"format": e.format.value, "quality": e.quality, "keep_metadata": e.keep_metadata},
            {"revisions": kit.model_revisions, "detector": kit.models.get("detector"),
             **shields})
        self.what_parts = (*self.key_parts[:2], shields)
        # Absolute sources of this run's photos, and which of them holds each ``what`` key
        # without a copy suffix (identical files each get their own key).
        self.sources: set[str] = set()
        self.claimed: dict[str, str] = {}
        # Photo warnings already said once for the whole job (kept in each photo's result).
        self.announced: set[str] = set()

    # ---------------------------------------------------------------- bookkeeping
    def fail(self, photo: _Photo, reason: str, **fields: Any) -> None:
        self.failed += 1
        self.sink(PhotoFailed(photo.id, str(photo.path), reason))
        try:
            self.journal.set_state(photo.key, "failed", album=photo.album.name,
                                   source=str(photo.path.absolute()), reason=reason, **fields)
        except OutputError as exc:  # the failure is reported; journaling it must not end the job
            log.warning("could not journal a failure: %s", exc)
        self.eta.photo_finished(photo.id)

    def journal_state(self, photo: _Photo, state: str, **fields: Any) -> None:
        s = self.job.settings
        if photo.what is not None:
            fields["what"] = photo.what
        self.journal.set_state(photo.key, state, album=photo.album.name,
                               source=str(photo.path.absolute()), source_sha256=photo.source_sha256,
                               settings={"preset": s.preset, "eps": s.eps,
                                         "layers": s.layers.value}, **fields)

    # ---------------------------------------------------------------- photos
    def identify(self, photo: _Photo) -> bool:
        """Hash the source file and derive the photo's journal key; False (photo failed) when
        the file cannot be read."""
        from dladiff_app.core.imageio import file_sha256

        try:
            photo.source_sha256 = file_sha256(photo.path)
        except DladiffError as exc:
            self.fail(photo, str(exc))
            return False
        photo.what = protection_key(photo.source_sha256, *self.what_parts)
        photo.key = protection_key(photo.source_sha256, *self.key_parts)
        source = str(photo.path.absolute())
        holder = self.claimed.get(photo.what)
        if holder is None:  # the copy an earlier run protected under the plain key keeps it
            earlier = [e.source for e in self.journal.same_what(photo.what)
                       if not copy_suffix(e.key) and e.source in self.sources]
            holder = earlier[-1] if earlier else None
        if holder is None or holder == source:
            self.claimed[photo.what] = source
        else:  # another file of this job has the same bytes: a photo of its own all the same
            photo.key = copy_key(photo.key, source)
        return True

    def finished_before(self, photo: _Photo) -> PhotoEntry | None:
        """The journal entry if this photo was finished at these settings by an earlier run and
        its file (if any) is still there, intact. A protection made with other face models
        (one was installed since) counts: the user asked for these settings, not for models."""
        entry = self.journal.entry(photo.key)
        if entry is None:  # a journal of version 1 keyed photos by their resolved path
            entry = self.journal.entry(str(photo.path.resolve()))
            if entry is not None and entry.source_sha256 is not None:
                entry = None
        if entry is not None:
            found = self._still_finished(entry)
            if found is not None:
                return found
        suffix = copy_suffix(photo.key)
        for other in self.journal.same_what(photo.what or ""):
            if other.key != photo.key and copy_suffix(other.key) == suffix \
                    and other.state == "done" and self._still_finished(other) is not None:
                return other
        return None

    def _still_finished(self, entry: PhotoEntry) -> PhotoEntry | None:
        """``entry`` when it is finished and its file (if any) is still there, intact."""
        if entry.state == "unprotected":
            wanted = self.job.export.export_unprotected
            return entry if not wanted or (entry.output and Path(entry.output).is_file()) \
                else None
        if entry.state != "done" or not entry.output:
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

    def report_earlier(self, photo: _Photo, entry: PhotoEntry) -> None:
        self.skipped += 1
        self.eta.photo_finished(photo.id)
        if entry.state == "unprotected":
            self.unprotected += 1
            self.sink(PhotoUnprotected(photo.id, str(photo.path),
                                       f"{entry.reason} (found by an earlier run)",
                                       entry.output))
            return
        result = None
        if entry.result:
            try:
                result = result_from_record({**entry.result, "output": entry.output})
            except (KeyError, TypeError, ValueError):
                result = None
        models = "" if entry.key == photo.key or entry.what is None else (
            " (by an earlier run with the face models installed then; protect into a new "
            "folder to use the ones installed now)")
        self.sink(PhotoSkipped(photo.id, str(photo.path),
                               f"already protected at these settings{models}: {entry.output}",
                               result))

    def load(self, photo: _Photo) -> bool:
        from dladiff_app.core.imageio import load_image

        try:
            loaded = load_image(photo.path)
        except DladiffError as exc:
            self.fail(photo, str(exc))
            return False
        photo.pixels = loaded.pixels
        photo.exif = loaded.exif_kept
        photo.notes = loaded.notes
        return True

    def shield(self, photo: _Photo, layer1_out: torch.Tensor | None,
               layer1_note: str, notices: tuple[str, ...] = ()) -> _Outcome:
        """Layer 2 + polish for one loaded photo (layer 1 ran on the album before).
        ``notices``: album-level warnings the photo carries (e.g. a fall-back)."""
        assert photo.pixels is not None
        started = time.monotonic()
        s = self.job.settings
        clean = torch.from_numpy(np.ascontiguousarray(photo.pixels)).permute(2, 0, 1)[None]
        # Without layer 1 the shields start from the clean photo itself: they only read their
        # start (and return new tensors), so no full-size copy is made (576 MB at 48 MP).
        current = layer1_out[None] if layer1_out is not None else clean
        out = _Outcome(current, ["layer1"] if layer1_out is not None else [],
                       {"layer1": layer1_note} if layer1_out is not None else {},
                       [*notices, *photo.notes], 0)
        faces: list[Face] = []
        step = self.eta.step_fn(photo.id)
        if s.layers.zeroshot:
            if self.kit.layer2 is None or self.kit.detector is None:
                out.warnings.append(self.kit.layer2_missing)
            else:
                faces = self.kit.detector.detect(photo.pixels)
                self.eta.faces_found(photo.id, len(faces))
                if not faces:
                    out.warnings.append(f"No face found in {photo.path.name}: the zero-shot "
                                        "shield was skipped for this photo.")
                else:
                    out2 = self.kit.layer2(clean, out.current, faces, self.cancel, step)
                    out.current = out2.protected
                    out.layers_done.append("layer2")
                    out.notes["layer2"] = out2.note
                    out.warnings.extend(out2.warnings)
        if ("layer1" in out.layers_done and "layer2" in out.layers_done and s.polish_steps > 0
                and self.kit.polish is not None):
            out.current, out.notes["polish"] = self.kit.polish(clean, out.current, faces,
                                                               self.cancel, step)
            out.layers_done.append("polish")
        out.faces = len(faces)
        out.seconds = time.monotonic() - started
        return out

    def protect(self, photo: _Photo, layer1_out: torch.Tensor | None,
                layer1_note: str, notices: tuple[str, ...] = ()) -> None:
        """Shields, then save (or report unprotected) and measure one loaded photo."""
        self.sink(PhotoStarted(photo.id, str(photo.path)))
        self.journal_state(photo, "running")
        outcome = self.shield(photo, layer1_out, layer1_note, notices)
        for w in outcome.warnings:
            if w not in self.announced:
                self.sink(Notice(w, photo.id))
        self.cancel.check()
        if not outcome.layers_done:
            self.finish_unprotected(photo, outcome)
            return
        self.save(photo, outcome)

    def _encode(self, photo: _Photo, current: torch.Tensor) -> tuple[bytes, str]:
        from dladiff_app.core.imageio import encode_image

        fmt = self.job.export.format.value
        pixels = current[0].permute(1, 2, 0).numpy()  # encode_image clips and quantises
        exif = photo.exif if self.job.export.keep_metadata else None
        return encode_image(pixels, fmt, quality=self.job.export.quality, exif=exif), fmt

    def finish_unprotected(self, photo: _Photo, outcome: _Outcome) -> None:
        """No shield changed the photo: never written as ``-protected``. Only on request is it
        exported, as ``-unprotected``, so nobody mistakes it for a protected copy."""
        from dladiff_app.core.atomic import create_exclusive
        from dladiff_app.core.imageio import protected_name

        reason = "; ".join(w for w in outcome.warnings if w) or "no shield could change it"
        if "No face found" in reason:
            reason = (f"no face found in {photo.path.name}, so the zero-shot shield could not "
                      "change it" + ("" if not self.job.settings.layers.finetune else
                                     " and the fine-tuning shield did not run"))
        written: Path | None = None
        if self.job.export.export_unprotected:
            data, fmt = self._encode(photo, outcome.current)
            planned = protected_name(photo.path, photo.album.output_dir(self.out), fmt,
                                     label="unprotected")
            written = create_exclusive(planned, data)
        fields: dict[str, Any] = {"reason": reason}
        if written is not None:
            fields["output"] = str(written)
        self.journal_state(photo, "unprotected", **fields)
        self.unprotected += 1
        self.eta.photo_finished(photo.id)
        self.sink(PhotoUnprotected(photo.id, str(photo.path), reason,
                                   str(written) if written else None))

    def save(self, photo: _Photo, outcome: _Outcome) -> None:
        """Encode, measure the encoded bytes, journal the full result, then publish the file:
        a crash after publishing leaves a journal that already holds the layers and scores."""
        from dladiff_app.core.atomic import create_exclusive, next_free_path
        from dladiff_app.core.imageio import protected_name

        step = self.eta.step_fn(photo.id)
        step("save", 0, 1)
        data, fmt = self._encode(photo, outcome.current)
        outcome.current = torch.empty(0)  # the float copy is not needed past this point
        planned = next_free_path(protected_name(photo.path, photo.album.output_dir(self.out),
                                                fmt))
        digest = sha256_bytes(data)
        step("score", 0, 1)
        record = self.measure(photo, _decode_8bit(data), planned, digest, outcome)
        step("score", 1, 1)
        self.journal_state(photo, "writing", planned=str(planned), sha256=digest, result=record)
        written = create_exclusive(planned, data)
        step("save", 1, 1)
        self.finish(photo, written, digest, record)

    def measure(self, photo: _Photo, saved: np.ndarray, planned: Path, digest: str,
                outcome: _Outcome) -> dict[str, Any]:
        """The manifest record of the photo, measured on ``saved``: the encoded file decoded,
        (H, W, 3) uint8 (8-bit holds the file exactly at a quarter of float32's memory)."""
        assert photo.pixels is not None
        m = measure_saved(photo.pixels, saved, self.kit.score, self.kit.score_faces,
                          views=_scoring_views(photo.pixels, saved))
        s = self.job.settings
        done = outcome.layers_done
        warnings = list(outcome.warnings)
        now = {"preset": s.preset, "eps": s.eps, "layers": s.layers.value}
        for other in self.journal.other_protections(photo.key, photo.source_sha256 or "",
                                                    photo.what):
            was = other.settings or {}
            what = "other settings" if was != now else "other shields available"
            warnings.append(
                f"Protected again with {what} (preset {s.preset}, budget {s.eps:g}/255, "
                f"shields {s.layers.value}); the earlier protection (preset "
                f"{was.get('preset', '?')}, budget {_budget(was.get('eps'))}, shields "
                f"{was.get('layers', '?')}) is kept in {other.output}.")
        result = PhotoResult(
            source=str(photo.path.absolute()), output=str(planned), width=saved.shape[1],
            height=saved.shape[0], seconds=round(outcome.seconds, 3),
            scores=m.scores, scores_after_sharing=m.scores_after_sharing, per_face=m.per_face,
            psnr=m.psnr, ssim=m.ssim, linf=m.linf, faces=outcome.faces, layers_done=tuple(done),
            warnings=tuple(warnings), face_ssim=m.face_ssim,
            face_de_mean=m.face_de_mean, face_de_p95=m.face_de_p95, face_jnd=m.face_jnd,
            extra={
                "sha256": digest, "source_sha256": photo.source_sha256, "preset": s.preset,
                "eps": s.eps, "eps_ft": s.finetune_eps, "layers": s.layers.value,
                "steps": {"layer1_pgd": s.layer1_total_pgd if "layer1" in done else 0,
                          "prior": s.prior_steps if "layer1" in done else 0,
                          "layer1_lora": s.layer1_total_lora if "layer1" in done else 0,
                          "layer2": s.layer2_steps if "layer2" in done else 0,
                          "polish": s.polish_steps if "polish" in done else 0},
                "device": self.kit.device_kind, "model_revisions": self.kit.model_revisions,
                "app_version": __version__, "layer_notes": outcome.notes,
                **({"layer1": self.layer1_record}
                   if "layer1" in done and self.layer1_record else {}),
            })
        return _manifest_photo(result)

    def finish(self, photo: _Photo, written: Path, digest: str, record: dict[str, Any]) -> None:
        """Journal the published file done and report it."""
        record = {**record, "output": str(written)}
        self.journal_state(photo, "done", output=str(written), sha256=digest, result=record)
        self.done += 1
        self.eta.photo_finished(photo.id)
        self.sink(PhotoDone(photo.id, result_from_record(record)))

    def adopt(self, photo: _Photo, written: Path) -> bool:
        """Finish a photo whose file an interrupted run published: its journaled result (layers,
        scores) stays; only a result-less journal (an older version) is measured again."""
        entry = self.journal.entry(photo.key)
        assert entry is not None and entry.sha256 is not None
        record = entry.result
        if not record:
            if not self.load(photo):
                return True
            outcome = _Outcome(torch.empty(0), [], {}, [
                "Recovered after an interruption: layers were recorded before the crash and "
                "are not listed here."], 0)
            record = self.measure(photo, _decode_8bit(written.read_bytes()), written,
                                  entry.sha256, outcome)
            photo.pixels = None
        self.finish(photo, written, entry.sha256, record)
        return True

    # ---------------------------------------------------------------- albums
    def run_album(self, index: int, album: Album, photos: list[_Photo]) -> None:
        if album.origin and self.journal.albums.get(album.name, {}).get("origin") != album.origin:
            try:
                self.journal.set_album(album.name, origin=album.origin)
            except OutputError as exc:  # its photos' records fail and say so
                log.warning("could not journal album %s: %s", album.name, exc)
        pending: list[_Photo] = []
        for photo in photos:
            if not self.identify(photo):
                continue
            entry = self.finished_before(photo)
            if entry is not None:
                self.report_earlier(photo, entry)
                continue
            adopted = self.written_before(photo)
            if adopted is not None:
                self.adopt(photo, adopted)
                continue
            crashes = self.journal.times_crashed(photo.key)
            if crashes >= CRASH_LIMIT:
                self.fail(photo, f"{photo.path.name}: failed repeatedly (out of memory?): the "
                          f"program stopped {crashes} times while protecting this photo, so it "
                          "is skipped. Protect it on its own, with a smaller copy, or on a "
                          "computer with more memory.", crashes=crashes)
                continue
            pending.append(photo)
        try:
            album.output_dir(self.out).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            err = OutputError(album.output_dir(self.out), exc.strerror or str(exc))
            for photo in pending:
                self.fail(photo, f"{photo.path.name}: {err}")
            return
        s = self.job.settings
        if not (pending and s.layers.finetune and self.kit.layer1 is not None):
            missing: tuple[str, ...] = ()
            if pending and s.layers.finetune:
                # Said once; each photo's result records that only the other shield ran.
                missing = (self.kit.layer1_missing or "The fine-tuning shield did not run.",)
                if missing[0] not in self.announced:
                    self.sink(Notice(missing[0]))
                    self.announced.add(missing[0])
            self.eta.album_finished(index)
            # Streaming: one photo decoded at a time, freed before the next is read.
            for photo in pending:
                if self.load(photo):
                    self.protect_guarded(photo, None, "", missing)
            return
        loaded = [p for p in pending if self.load(p)]
        self.layer1_record = {}
        layer1_out: list[torch.Tensor | None] = [None] * len(loaded)
        layer1_note = ""
        album_notices: tuple[str, ...] = ()
        if loaded:
            images = [torch.from_numpy(np.ascontiguousarray(p.pixels)).permute(2, 0, 1)
                      for p in loaded]
            try:
                out1 = self.kit.layer1(images, self.cancel, self.eta.step_fn(None))
                layer1_out, layer1_note = list(out1.protected), out1.note
                self.layer1_record = out1.record
                album_notices = out1.warnings
            except Cancelled:
                raise
            except Exception as exc:  # typed or not, it must not cost the other albums
                if not isinstance(exc, DladiffError):
                    log.exception("the fine-tuning shield failed on album %s", album.name)
                    exc = RuntimeError(f"internal error ({type(exc).__name__}: {exc}); "
                                       "please report it")
                if not (s.layers.zeroshot and self.kit.layer2 is not None):
                    # Nothing to fall back to: an unprotected copy must not pass as one.
                    for p in loaded:
                        self.fail(p, f"{p.path.name}: the fine-tuning shield failed: {exc}")
                    return
                album_notices = (f"The fine-tuning shield failed on album {album.name} "
                                 f"({exc}); its photos were protected with the zero-shot "
                                 "shield only.",)
            del images
        self.eta.album_finished(index)
        for i, photo in enumerate(loaded):
            self.protect_guarded(photo, layer1_out[i], layer1_note, album_notices)
            layer1_out[i] = None  # free each protected copy as soon as it is saved

    def protect_guarded(self, photo: _Photo, layer1_out: torch.Tensor | None,
                        layer1_note: str, notices: tuple[str, ...] = ()) -> None:
        try:
            self.protect(photo, layer1_out, layer1_note, notices)
        except Cancelled:
            entry = self.journal.entry(photo.key)
            try:  # stopped on purpose: not a crash, the photo waits for the resume
                if entry is not None and entry.state == "running":
                    self.journal_state(photo, "queued")
            except DladiffError as exc:
                log.warning("could not journal a cancelled photo: %s", exc)
            raise
        except DladiffError as exc:
            self.fail(photo, str(exc) if photo.path.name in str(exc)
                      else f"{photo.path.name}: {exc}")
        except Exception as exc:  # a bug must not cost the rest of the batch
            log.exception("protecting %s failed", photo.path)
            self.fail(photo, f"{photo.path.name}: internal error ({type(exc).__name__}: "
                             f"{exc}); please report it")
        finally:
            photo.pixels = None  # free memory of finished photos early
            photo.exif = None

    def write_reports(self, album: Album) -> None:
        if not self.job.export.write_report:
            return
        try:
            write_album_reports(self.journal, album, self.out, self.job, self.kit)
        except DladiffError as exc:
            self.sink(Notice(f"The report for album {album.name} could not be written: {exc}"))


# A photo during which the process died this often (out of memory, most likely) is skipped by
# later resumes, so the photos after it get done.
CRASH_LIMIT = 2

# Photos with more pixels than this are scored on a downscaled view (long side SCORE_MAX_SIDE):
# the detector searches a <= 1600 px copy anyway and every encoder's face crop is far smaller,
# while full-resolution float copies of a 24-48 MP photo in the scorer cost gigabytes.
SCORE_MAX_SIDE = 4096


def _scoring_views(clean: np.ndarray, saved8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``clean`` ((H, W, 3) float32 [0, 1]) and ``saved8`` (the same size, uint8) as the scorer
    sees them, both float32 [0, 1]: full size up to SCORE_MAX_SIDE, else both downscaled alike
    (Lanczos, 8-bit)."""
    h, w = clean.shape[:2]
    if max(h, w) <= SCORE_MAX_SIDE:
        return clean, saved8.astype(np.float32) / np.float32(255.0)
    scale = SCORE_MAX_SIDE / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return resize_like(clean, size), resize_like(saved8, size)


def _budget(eps: Any) -> str:
    return f"{eps:g}/255" if isinstance(eps, (int, float)) else "?/255"


def _decode_8bit(data: bytes) -> np.ndarray:
    """Our own encoded PNG/JPEG/WebP (RGB, untagged sRGB, upright) as (H, W, 3) uint8: the
    values ``load_image`` would return, times 255."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def _manifest_photo(result: PhotoResult) -> dict[str, Any]:
    """The manifest's record of a photo: the PhotoResult with its ``extra`` fields lifted up."""
    d = result.to_dict()
    extra = d.pop("extra")
    d.update(extra)
    return d


def run_job(job: ProtectJob, kit: EngineKit, sink: EventSink,
            cancel: CancelToken | None = None) -> JobSummary:
    """Protect every photo of ``job``; per-photo problems become PhotoFailed events, photos no
    shield could change PhotoUnprotected events, a cancel becomes
    ``JobSummary(cancelled=True)``.

    Raises :class:`JobConflictError` when the output folder holds another job and
    ``job.resume`` is off, :class:`JobLockedError` (a JobConflictError) when another process is
    protecting into it right now, :class:`NothingToProtectError` when the inputs hold no photo
    at all (nothing is created then), :class:`UnusableOutputError` when the output folder is a
    file or the photos' own folder (nothing is created then), :class:`OutputError` when the
    output folder cannot be used at all (every photo is reported failed first)."""
    from dladiff_app.core.joblock import JobLock

    cancel = cancel or CancelToken()
    out = Path(job.output_dir).absolute()
    check_output_folder(out, job.inputs)
    found = discover_inputs(job.inputs, recursive=job.recursive, exclude=out)
    if not (found.files or found.missing or found.inside_output or found.unreadable):
        raise NothingToProtectError(
            "There is no photo to protect in " + ", ".join(str(p) for p in job.inputs)
            + (f" (only {len(found.ignored)} file(s) that are not pictures)" if found.ignored
               else "") + "; nothing was started." + "".join(
                f" {line}" for line in _discovery_notes(found)))
    lock = JobLock(out)
    if Journal(out).exists and not job.resume:
        raise JobConflictError(
            f"{out} already holds a DLADiff job journal. Resume it with --resume, or choose "
            "an empty output folder (nothing there was changed).")
    lock.acquire()
    try:
        return _run_locked(job, kit, sink, cancel, found)
    finally:
        lock.release()


def _run_locked(job: ProtectJob, kit: EngineKit, sink: EventSink, cancel: CancelToken,
                found: Discovery) -> JobSummary:
    from dladiff_app.core.atomic import remove_stale_temps

    run = _Run(job, kit, sink, cancel)  # reads the journal now that no other writer can append
    albums = group_albums(found.files, job.album_mode, _known_albums(run.journal, job))
    # Hidden temporary files of a writer that was killed: nobody else writes here (locked).
    owned = _own_files(run.journal)
    for folder in [run.out, *(a.output_dir(run.out) for a in albums)]:
        for path in remove_stale_temps(folder, owned):
            log.info("removed %s, left by an interrupted run", path)
    photos: list[_Photo] = []
    for album in albums:
        for path in album.photos:
            photos.append(_Photo(len(photos), path, album, _path_key(path)))
    run.sources = {str(p.path.absolute()) for p in photos}
    unusable = [(m, "the file or folder does not exist") for m in found.missing] + [
        (m, f"this folder is inside the output folder {run.out}, which is never read as input "
            "(its protected copies would be protected again): choose an output folder outside "
            "your photos") for m in found.inside_output] + list(found.unreadable)
    missing = [_Photo(len(photos) + i, m, Album("missing", (m,)), _path_key(m))
               for i, (m, _) in enumerate(unusable)]
    started = JobStarted(len(photos) + len(missing), kit.device_name, f"{len(albums)} album(s)",
                         unusable=len(missing))
    try:  # journaled before anything is announced: a kill after JobStarted leaves a resumable job
        run.journal.start_job(job)
    except OutputError as exc:
        sink(started)
        for photo in [*photos, *missing]:
            run.failed += 1
            sink(PhotoFailed(photo.id, str(photo.path), f"{photo.path.name}: {exc}"))
        sink(JobFinished(0, run.failed, 0, time.monotonic() - run.t0))
        raise
    sink(started)
    for message in kit.notices:
        sink(Notice(message))
    if found.ignored:
        sink(Notice(f"Ignored {len(found.ignored)} file(s) that are not pictures, e.g. "
                    f"{found.ignored[0].name}."))
    for line in _discovery_notes(found):
        sink(Notice(line))
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
                          time.monotonic() - run.t0, run.unprotected)
    seconds = time.monotonic() - run.t0
    sink(JobFinished(run.done, run.failed, run.skipped, seconds, run.unprotected))
    return JobSummary(run.done, run.failed, run.skipped, False, str(run.out), seconds,
                      run.unprotected)


def _known_albums(journal: Journal, job: ProtectJob) -> dict[str, str]:
    """Album origin -> name as earlier runs of this job gave them, so they stay whatever was
    added to the inputs: from the album records, else (a journal of an older version) from
    where its photos came from."""
    import os

    known = {str(f["origin"]): name for name, f in journal.albums.items() if f.get("origin")}
    if known or job.album_mode is AlbumMode.SINGLE:
        return known
    for e in journal.photos.values():
        if not e.album or e.album == "missing" or e.source.startswith("path:"):
            continue
        origin = (os.path.realpath(os.path.dirname(e.source))
                  if job.album_mode is AlbumMode.PER_FOLDER else e.source)
        known.setdefault(origin, e.album)
    return known


# Exports of photos no shield changed are published before their record is written.
_UNPROTECTED_NAME = re.compile(r".*-unprotected(-\d+)?\.(png|jpg|webp)$", re.DOTALL)


def _own_files(journal: Journal) -> Callable[[str], bool]:
    """Whether a temporary file's final name is one this job writes: a photo's planned or
    written file or an album's manifest or report (each journaled before it is written), or an
    unprotected export. A user's file that looks like a temporary one is not ours."""
    from dladiff_app.core.atomic import shortened

    paths = [p for e in journal.photos.values() for p in (e.planned, e.output) if p]
    paths += [str(f[k]) for f in journal.albums.values() for k in ("manifest", "report")
              if f.get(k)]
    known = {shortened(Path(p).name) for p in paths}
    return lambda target: target in known or bool(_UNPROTECTED_NAME.match(target))


def _discovery_notes(found: Discovery) -> list[str]:
    """What discovery left out on purpose and the user may not expect."""
    notes = [f"Skipped {folder}: it holds the protected copies of an earlier DLADiff job, and "
             "protecting them again would stack protections on copies." for folder in
             found.job_folders]
    notes += [f"{folder} has no pictures of its own, only sub-folders: include sub-folders to "
              "protect their photos (-r in the command line)." for folder in
              found.only_subfolders]
    return notes


def _path_key(path: Path) -> str:
    """Journal key of a photo whose bytes could not be read (it can only fail)."""
    try:
        return "path:" + str(path.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return "path:" + str(path.absolute())
