"""Real implementations of the engine services the front ends are given (``core.services``).

``build_services`` is what the app's composition root calls: one :class:`ModelStore` (the cache's
models folder plus the user's local copies from the settings) shared by the model manager and
every protect kit. ``build_kit`` binds the shields, the face detector, the identity encoders and
the device into the runner's :class:`EngineKit`; ``EngineProtectService`` keeps one kit warm so
models stay loaded between jobs, and estimates job times from costs measured on this machine.

No torch at import time: the window must appear before the ML stack loads.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import ModelMissingError
from dladiff_app.core.events import EventSink
from dladiff_app.core.jobs import ProtectJob
from dladiff_app.core.presets import Layers, ProtectionSettings
from dladiff_app.core.results import IdentityScore, PhotoResult
from dladiff_app.core.services import DeviceSummary, JobSummary, ModelRow
from dladiff_app.engine.estimate import (
    CPU_SECONDS_PER_LORA_STEP_512,
    CPU_SECONDS_PER_PGD_STEP_512,
    Calibration,
    JobEstimate,
    calibrate,
    estimate_job,
)

if TYPE_CHECKING:
    import torch

    from dladiff_app.core.settings import Settings
    from dladiff_app.engine.faces.types import Face, FaceDetector, IdentityEncoder
    from dladiff_app.engine.models.store import ModelStore
    from dladiff_app.engine.runner import EngineKit, Layer2Output, StepFn
    from dladiff_app.engine.shield.layer1 import Layer1Surrogates

log = logging.getLogger(__name__)


def _pipeline_identity(pipeline_dir: Path) -> dict[str, Any]:
    """What identifies the SD pipeline used (for the manifest): path, model_index.json hash,
    weight file sizes (a rename of the same folder keeps the hash)."""
    import hashlib

    info: dict[str, Any] = {"name": "stable-diffusion", "path": str(pipeline_dir)}
    index = pipeline_dir / "model_index.json"
    if index.is_file():
        info["revision"] = "model_index sha256:" + hashlib.sha256(index.read_bytes()).hexdigest()[:16]
    weights = ([pipeline_dir] if pipeline_dir.is_file()  # a single-file checkpoint
               else sorted(pipeline_dir.rglob("*.safetensors")))
    info["weights_bytes"] = sum(p.stat().st_size for p in weights)
    return info


def _largest(faces: Sequence[Face]) -> Face | None:
    return max(faces, key=lambda f: f.area) if faces else None


def make_scorer(detector: FaceDetector | None, encoders: Sequence[IdentityEncoder]
                ) -> Callable[[np.ndarray, np.ndarray], list[IdentityScore]]:
    """Identity of the subject (largest face) in ``clean`` vs in ``other``, per encoder.

    Both images (H, W, 3) float32 RGB [0, 1], sizes may differ; each is detected on its own, so
    a protection that also hides the face shows as "no face found in the protected image". The
    other image is the same scene (saved or shared copy), so the subject is matched by position
    only: another person's face is never scored as the subject's (that would read as "different
    person")."""
    from dladiff_app.engine.faces.score import score_images

    def score(clean: np.ndarray, other: np.ndarray) -> list[IdentityScore]:
        if detector is None or not encoders:
            return []
        matches = score_images(clean, other, detector, encoders, match="largest",
                               labels=("the original", "the protected image"), same_framing=True)
        return list(matches[0].scores) if matches else []
    return score


def _with_dlib_shapes(image: np.ndarray, faces: list[Face],
                      encoders: Sequence[IdentityEncoder]) -> list[Face]:
    """dlib's chip is placed by dlib's own 68 landmarks: faces found by another detector
    (SCRFD) get them before the dlib encoder sees them."""
    if not any(e.name == "dlib" for e in encoders) or all(f.dlib_shape is not None
                                                           for f in faces):
        return faces
    from dataclasses import replace

    from dladiff_app.engine.faces.dlib_detect import dlib_shape_for_box

    return [f if f.dlib_shape is not None else
            replace(f, dlib_shape=np.asarray(dlib_shape_for_box(image, f.box), np.float64))
            for f in faces]


class _Layer1State:
    """What one kit's layer 1 keeps between its album pass and the per-photo polish: the loaded
    surrogates of the current album (released when the next album starts) and the measured
    seconds of one PGD step for one photo."""

    def __init__(self) -> None:
        self.surrogates: Layer1Surrogates | None = None
        self.pgd_step_s: float | None = None


def _layer1_fn(pipeline_dir: Path, settings: ProtectionSettings, device: Any,
               working_size: int | None, cache_dir: Path | None, state: _Layer1State,
               keep_surrogates: bool) -> Any:
    from dladiff_app.engine.shield.layer1 import protect_album_layer1

    def run(images: list[torch.Tensor], cancel: CancelToken, step: StepFn
            ) -> tuple[list[torch.Tensor], str]:
        state.surrogates = None  # never two Stable Diffusions in memory at once
        res = protect_album_layer1(images, pipeline_dir, settings, device=device,
                                   working_size=working_size, cache_dir=cache_dir,
                                   cancel=cancel, progress=step,
                                   keep_surrogates=keep_surrogates)
        state.surrogates = res.surrogates
        st = res.stats
        if settings.layer1_total_pgd:
            state.pgd_step_s = st.pgd_seconds / settings.layer1_total_pgd / len(images)
        note = (f"{len(images)} photo(s) at {st.working_size} px; surrogate denoising loss "
                + (f"{st.dual_loss_per_round[0]:.4f} -> {st.dual_loss_per_round[-1]:.4f}"
                   if st.dual_loss_per_round else "not recorded")
                + ("; prior surrogate reused from cache" if res.prior_cache_hit else ""))
        return res.protected, note
    return run


def _layer2_fn(encoders: Sequence[IdentityEncoder], settings: ProtectionSettings) -> Any:
    from dladiff_app.engine.runner import Layer2Output
    from dladiff_app.engine.shield.layer2 import protect_faces

    def run(clean: torch.Tensor, start: torch.Tensor, faces: list[Face], cancel: CancelToken,
            step: StepFn) -> Layer2Output:
        pixels = clean[0].permute(1, 2, 0).numpy()
        faces = _with_dlib_shapes(pixels, faces, encoders)
        res = protect_faces(clean, start, faces, list(encoders), settings, cancel=cancel,
                            progress=lambda i, n: step("layer2", i, n),
                            generator_seed=settings.seed)
        sims = "; ".join(", ".join(f"{k} {v:.3f}" for k, v in face.items())
                         for face in res.final_similarity)
        return Layer2Output(res.protected, res.steps_done, tuple(res.warnings),
                            f"{len(faces)} face(s), {res.steps_done} steps; identity after: {sims}")
    return run


def _polish_fn(encoders: Sequence[IdentityEncoder], settings: ProtectionSettings,
               state: _Layer1State) -> Any:
    """The runner's polish: joint steps on layer 2's and layer 1's losses with the surrogates
    layer 1 left loaded for this album (see ``shield.polish``)."""
    from dladiff_app.engine.shield.polish import polish_photo

    def run(clean: torch.Tensor, current: torch.Tensor, faces: list[Face], cancel: CancelToken,
            step: StepFn) -> tuple[torch.Tensor, str]:
        if state.surrogates is None:
            return current, "skipped: the fine-tuning surrogates were not kept"
        pixels = clean[0].permute(1, 2, 0).numpy()
        faces = _with_dlib_shapes(pixels, faces, encoders)
        step("polish", 0, settings.polish_steps)
        res = polish_photo(clean, current, faces, encoders, state.surrogates, settings,
                           cancel=cancel, progress=lambda i, n: step("polish", i, n))
        return res.protected, (f"{res.steps_done} joint steps; identity loss "
                               f"{res.identity_before:.3f} -> {res.identity_after:.3f}; "
                               f"surrogate loss {res.dual_first:.4f} -> {res.dual_last:.4f}")
    return run


def _default_store() -> ModelStore:
    from dladiff_app.core.paths import models_dir
    from dladiff_app.core.settings import load_settings
    from dladiff_app.engine.models.store import ModelStore

    settings = load_settings()
    return ModelStore(models_dir(settings), settings_paths=settings.model_paths)


def build_kit(settings: ProtectionSettings, *, device: str = "auto",
              pipeline_dir: Path | None = None, detector: FaceDetector | None = None,
              encoders: Sequence[IdentityEncoder] | None = None, working_size: int | None = None,
              cache_dir: Path | None = None, store: ModelStore | None = None) -> EngineKit:
    """The real kit. Missing pieces become ``*_missing`` reasons, never exceptions, so a job
    without Stable Diffusion still runs the zero-shot shield (and says so).

    Models not given explicitly are looked up in ``store`` (default: the user's store, with the
    local copies saved in the settings). The polish runs when both layers can run and
    ``settings.polish_steps > 0``."""
    from dladiff_app.engine.device import resolve_device
    from dladiff_app.engine.face_results import make_face_scorer
    from dladiff_app.engine.runner import EngineKit

    info = resolve_device(device)
    if detector is None or encoders is None:
        from dladiff_app.engine.faces import registry

        store = store if store is not None else _default_store()
        detector = detector if detector is not None else registry.available_detector(store)
        encoders = encoders if encoders is not None else registry.available_encoders(store)
    layer1_missing = ""
    if pipeline_dir is None and settings.layers.finetune:
        try:
            pipeline_dir = (store if store is not None else _default_store()).path("sd15")
        except ModelMissingError as exc:
            # Read in the CLI and in the app alike: name both ways to switch the shield off.
            layer1_missing = (f"The fine-tuning shield was skipped: {exc} To protect with the "
                              "zero-shot shield only, switch the fine-tuning shield off (in "
                              "the command line: --layers zeroshot).")
    if cache_dir is None:
        from dladiff_app.core.paths import cache_dir as default_cache

        cache_dir = default_cache() / "prior_lora"
    notices = _encoder_notices(store, encoders) if settings.layers.zeroshot else ()
    layer2_missing = "" if encoders else (
        "The zero-shot shield was skipped: no identity encoder is available (install "
        "face_recognition_models for the offline one, or download buffalo_l).")
    models: dict[str, Any] = {
        "sd_pipeline": _pipeline_identity(pipeline_dir) if pipeline_dir is not None else None,
        "detector": getattr(detector, "name", None),
        "encoders": [{"name": e.name, "path": getattr(e, "source_path", None),
                      "revision": getattr(e, "revision", None)} for e in encoders],
    }
    state = _Layer1State()
    polish = (settings.layers.finetune and settings.layers.zeroshot and settings.polish_steps > 0
              and pipeline_dir is not None and bool(encoders))
    return EngineKit(
        device_kind=info.kind, device_name=info.name, detector=detector,
        score=make_scorer(detector, encoders),
        score_faces=make_face_scorer(detector, encoders),
        layer1=(_layer1_fn(pipeline_dir, settings, info, working_size, cache_dir, state, polish)
                if pipeline_dir is not None else None),
        layer1_missing=layer1_missing,
        layer2=_layer2_fn(encoders, settings) if encoders else None,
        layer2_missing=layer2_missing,
        notices=notices,
        polish=_polish_fn(encoders, settings, state) if polish else None,
        models=models,
        model_revisions={"sd_pipeline": models["sd_pipeline"]["revision"]
                         if models["sd_pipeline"] and "revision" in models["sd_pipeline"] else None,
                         "encoders": [e.name for e in encoders]},
        layer1_step_seconds=lambda: _measured_pgd_step(state),
    )


def _encoder_notices(store: ModelStore | None,
                     encoders: Sequence[IdentityEncoder]) -> tuple[str, ...]:
    """What the user should know about the offline ensemble: without SFace (the offline
    ArcFace-family model), the zero-shot shield fools dlib but much less the ArcFace models
    that attack tools use."""
    if any(e.name == "sface" for e in encoders):
        return ()
    from dladiff_app.engine.faces import registry

    try:
        status = next(s for s in registry.encoder_statuses(store or _default_store())
                      if s.name == "sface")
    except StopIteration:
        return ()
    detail = status.reason if not status.available else "it was not selected"
    return (f"SFace, the offline ArcFace-family face model, is not in use ({detail}). The "
            "zero-shot shield runs with the other models, but protects less against the "
            "ArcFace models that attack tools use.",)


def _measured_pgd_step(state: _Layer1State) -> float | None:
    """Seconds of one layer-1 PGD step for one photo: measured during the last album, or timed
    now on the surrogates still loaded; None when this kit has not run layer 1 yet."""
    if state.pgd_step_s is None and state.surrogates is not None:
        state.pgd_step_s = state.surrogates.time_step()
    return state.pgd_step_s


def estimate_layer1_seconds(settings: ProtectionSettings, n_photos: int, device_kind: str,
                            working_size: int = 512) -> float | None:
    """Layer-1 wall time from the measured CPU costs (scaled by pixel count of the working size;
    per-step cost grows with the album through micro-batches). None where no measurement exists
    for the device (the caller then says the time is unknown)."""
    if device_kind != "cpu" or not settings.layers.finetune:
        return None if settings.layers.finetune else 0.0
    scale = (working_size / 512) ** 2 * max(1, n_photos)
    pgd = settings.layer1_total_pgd * CPU_SECONDS_PER_PGD_STEP_512
    lora = (settings.layer1_rounds * settings.layer1_lora_steps + settings.prior_steps
            ) * CPU_SECONDS_PER_LORA_STEP_512
    return (pgd + lora) * scale


class EngineProtectService:
    """``ProtectService`` over :func:`run_job`; one kit is kept warm between jobs.

    ``store``: the model store shared with the model manager (default: the user's).
    ``default_device``: the device of jobs that ask for ``"auto"`` (the settings' choice).
    Other keyword options go to :func:`build_kit` (tests inject models and folders that way).
    """

    def __init__(self, *, store: ModelStore | None = None, default_device: str = "auto",
                 **kit_options: Any) -> None:
        self._store = store
        self.default_device = default_device
        self._kit_options = kit_options
        self._kits: dict[tuple[Any, ...], EngineKit] = {}
        self._calibrations: dict[tuple[str, tuple[str, ...]], Calibration] = {}
        self._face_models: tuple[FaceDetector | None, list[IdentityEncoder]] | None = None
        self._face_models_key: tuple[Any, ...] | None = None
        self._face_counts: dict[tuple[str, int, int], int | None] = {}
        self._lock = threading.Lock()

    @property
    def store(self) -> ModelStore:
        if self._store is None:
            self._store = _default_store()
        return self._store

    def _device(self, requested: str) -> str:
        return self.default_device if requested == "auto" else requested

    def _sd_path(self) -> str | None:
        if self._kit_options.get("pipeline_dir") is not None:
            return str(self._kit_options["pipeline_dir"])
        try:
            return str(self.store.path("sd15"))
        except ModelMissingError:
            return None

    def _store_state(self) -> tuple[Any, ...]:
        """What decides which face models and SD the store offers (cheap: marker files only), so
        a model downloaded or chosen in the model manager is picked up by the next job."""
        from dladiff_app.engine.faces.registry import ENCODERS

        present = tuple(self.store.status(mid).present for mid, _ in ENCODERS.values()
                        if mid in self.store.registry)
        return (self._sd_path(), present, tuple(sorted(self.store.local_paths.items())))

    def _faces(self) -> tuple[FaceDetector | None, list[IdentityEncoder]]:
        """The detector and encoders, loaded once per store state and shared by kits and the
        calibration."""
        state = self._store_state()
        if self._face_models is None or self._face_models_key != state:
            from dladiff_app.core.errors import DladiffError
            from dladiff_app.engine.faces import registry

            detector = self._kit_options.get("detector")
            encoders = self._kit_options.get("encoders")
            if detector is None:
                try:
                    detector = registry.available_detector(self.store)
                except DladiffError as exc:
                    log.info("no face detector: %s", exc)
            if encoders is None:
                try:
                    encoders = registry.available_encoders(self.store)
                except DladiffError as exc:
                    log.info("no identity encoder: %s", exc)
                    encoders = []
            # The key only after a successful load: a load that raised is retried next time
            # instead of leaving the old models labelled with the new state.
            self._face_models = (detector, list(encoders))
            self._face_models_key = state
        return self._face_models

    def kit_for(self, job: ProtectJob) -> EngineKit:
        device = self._device(job.device)
        key = (device, job.settings, self._store_state(), job.pipeline)
        with self._lock:
            if key not in self._kits:
                self._kits.clear()  # one warm kit at a time: SD weights are big
                detector, encoders = self._faces()
                options = {**self._kit_options, "detector": detector, "encoders": encoders}
                if job.pipeline is not None:
                    options["pipeline_dir"] = job.pipeline
                self._kits[key] = build_kit(job.settings, device=device, store=self.store,
                                            **options)
            return self._kits[key]

    def protect(self, job: ProtectJob, sink: EventSink, cancel: CancelToken) -> JobSummary:
        from dladiff_app.engine.runner import run_job

        return run_job(job, self.kit_for(job), sink, cancel)

    def calibration(self, device_kind: str) -> Calibration:
        """The per-photo costs measured on ``device_kind`` (once; then cached)."""
        detector, encoders = self._faces()
        key = (device_kind, tuple(e.name for e in encoders))
        if key not in self._calibrations:
            self._calibrations[key] = calibrate(encoders, detector)
        return self._calibrations[key]

    def estimate(self, n_photos: int, settings: ProtectionSettings,
                 megapixels: float = 12.0, faces: Sequence[int] | None = None) -> JobEstimate:
        """The estimate with its parts and where they come from (see ``engine.estimate``);
        ``faces``: faces per photo from :meth:`count_faces` (None: one each)."""
        from dladiff_app.engine.device import resolve_device

        kind = resolve_device(os.environ.get("DLADIFF_DEVICE") or self.default_device).kind
        pgd_step = None
        for kit in list(self._kits.values()):
            if kit.device_kind == kind and kit.layer1_step_seconds is not None:
                pgd_step = kit.layer1_step_seconds()
        return estimate_job(n_photos, settings, megapixels, self.calibration(kind),
                            layer1_available=self._sd_path() is not None,
                            pgd_step_s=pgd_step, device_kind=kind, faces=faces)

    def estimate_seconds(self, n_photos: int, settings: ProtectionSettings,
                         megapixels: float = 12.0, faces: Sequence[int] | None = None) -> float:
        """Seconds for the whole job; NaN while the layer-1 cost is unknown (a GPU before its
        first step), which the GUI shows as "not known yet"."""
        total = self.estimate(n_photos, settings, megapixels, faces).total_s
        return total if math.isfinite(total) else float("nan")

    def count_faces(self, paths: Sequence[Path]) -> list[int | None]:
        """Faces the protection's own detector finds in each photo (None: unreadable), so an
        estimate is per face. Remembered per file (path, size, modification time)."""
        from dladiff_app.core.errors import DladiffError
        from dladiff_app.core.imageio import load_image

        detector, _ = self._faces()
        out: list[int | None] = []
        for path in paths:
            try:
                st = Path(path).stat()
            except OSError:
                out.append(None)
                continue
            key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
            if key not in self._face_counts:
                if detector is None:
                    return [None] * len(paths)
                try:
                    self._face_counts[key] = len(detector.detect(load_image(Path(path)).pixels))
                except DladiffError:
                    self._face_counts[key] = None
            out.append(self._face_counts[key])
        return out


    def measure(self, source: Path, output: Path) -> PhotoResult:
        """The figures of a protected file as written (``output``, for example an exported
        JPEG) against its clean photo ``source``, measured like the runner measures its own
        files: identity scores of every face, also after sharing, PSNR, SSIM, largest change."""
        from dladiff_app.core.imageio import load_image
        from dladiff_app.engine.face_results import make_face_scorer, measure_saved

        detector, encoders = self._faces()
        clean, saved = load_image(Path(source)).pixels, load_image(Path(output)).pixels
        if clean.shape != saved.shape:
            from dladiff_app.core.errors import ImageError

            raise ImageError(output, f"it is {saved.shape[1]}x{saved.shape[0]} but "
                                     f"{Path(source).name} is {clean.shape[1]}x"
                                     f"{clean.shape[0]}: they cannot be compared")
        m = measure_saved(clean, saved, make_scorer(detector, encoders),
                          make_face_scorer(detector, encoders))
        return PhotoResult(source=str(source), output=str(output), width=saved.shape[1],
                           height=saved.shape[0], seconds=0.0, scores=m.scores,
                           scores_after_sharing=m.scores_after_sharing, per_face=m.per_face,
                           psnr=m.psnr, ssim=m.ssim, linf=m.linf, faces=len(m.per_face))


class EngineDeviceService:
    def __init__(self, default: str = "auto") -> None:
        self.default = default

    def describe(self, requested: str = "auto") -> DeviceSummary:
        from dladiff_app.engine.device import available_kinds, resolve_device

        info = resolve_device(self.default if requested == "auto" else requested)
        return DeviceSummary(info.kind, info.name, info.memory_bytes, info.reason,
                             available=available_kinds())


class EngineModelService:
    """``ModelService`` over the model store and registry. With ``settings``, a local copy the
    user chooses is also written into them and saved (to ``settings_path`` when given)."""

    def __init__(self, root: Path | None = None, *, store: ModelStore | None = None,
                 settings: Settings | None = None, settings_path: Path | None = None) -> None:
        if store is None:
            from dladiff_app.core.paths import models_dir
            from dladiff_app.engine.models.store import ModelStore

            store = ModelStore(root or models_dir(settings),
                               settings_paths=settings.model_paths if settings else None)
        self.store = store
        self.settings = settings
        self.settings_path = settings_path

    def list_models(self) -> list[ModelRow]:
        from dladiff_app.engine.models.registry import REGISTRY

        rows = []
        for spec in REGISTRY.values():
            st = self.store.status(spec.id)
            rows.append(ModelRow(
                id=spec.id, title=spec.title, purpose=spec.purpose, present=st.present,
                size_bytes=st.size_bytes if st.present else spec.size_bytes,
                license_name=spec.license_name, license_text=spec.license_text,
                path=str(st.path) if st.path else None, source=st.source))
        return rows

    def download(self, model_id: str, progress: Callable[[int, int | None], None],
                 cancel: CancelToken) -> None:
        self.store.download(model_id, progress, cancel, accept_license=True)

    def use_local(self, model_id: str, path: str) -> None:
        resolved = self.store.use_local(model_id, Path(path))
        if self.settings is not None:
            from dladiff_app.core.settings import save_settings

            self.settings.model_paths[model_id] = str(resolved)
            save_settings(self.settings, self.settings_path)


@dataclass
class EngineServices:
    """What the GUI's ``launch.run_app`` is given."""

    protect: EngineProtectService
    models: EngineModelService
    device: EngineDeviceService


def build_services(settings: Settings, settings_path: Path | None = None,
                   **kit_options: Any) -> EngineServices:
    """The real services for the app: ONE model store rooted at ``models_dir(settings)`` and
    seeded with ``settings.model_paths``, shared by the model manager and the protect kits, so a
    local copy chosen in the model manager is what the next job uses. ``settings.device`` is the
    device of "auto" jobs. ``kit_options`` go to :func:`build_kit` (e.g. ``working_size``).
    Cheap: no ML library is imported here."""
    from dladiff_app.core.paths import models_dir
    from dladiff_app.engine.models.store import ModelStore

    store = ModelStore(models_dir(settings), settings_paths=settings.model_paths)
    return EngineServices(
        protect=EngineProtectService(store=store, default_device=settings.device,
                                     **kit_options),
        models=EngineModelService(store=store, settings=settings, settings_path=settings_path),
        device=EngineDeviceService(settings.device),
    )


__all__ = ["EngineDeviceService", "EngineModelService", "EngineProtectService",
           "EngineServices", "Layers", "build_kit", "build_services", "estimate_layer1_seconds",
           "make_scorer"]
