"""Real implementations of the engine services the front ends are given (``core.services``).

``build_services`` is what the app's composition root calls: one :class:`ModelStore` (the cache's
models folder plus the user's local copies from the settings) shared by the model manager and
every protect kit. ``EngineProtectService`` keeps one kit warm (``engine.kit.build_kit``) and
one Stable Diffusion base per pipeline and device across kits, so models stay loaded between
jobs, and estimates job times from costs measured on this machine.

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

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import ModelMissingError
from dladiff_app.core.events import EventSink
from dladiff_app.core.jobs import ProtectJob
from dladiff_app.core.presets import Layers, ProtectionSettings
from dladiff_app.core.results import PhotoResult
from dladiff_app.core.services import DeviceSummary, FacePreview, JobSummary, ModelRow
from dladiff_app.engine.estimate import (
    Calibration,
    JobEstimate,
    calibrate,
    estimate_job,
    estimate_layer1_seconds,
)

# The kit builders live in ``engine.kit``; these names stay importable from here for the
# command line and older callers.
from dladiff_app.engine.kit import _default_store, _pipeline_identity, build_kit, make_scorer

if TYPE_CHECKING:
    from dladiff_app.core.settings import Settings
    from dladiff_app.engine.faces.types import FaceDetector, IdentityEncoder
    from dladiff_app.engine.models.store import ModelStore
    from dladiff_app.engine.runner import EngineKit
    from dladiff_app.engine.shield.layer1_session import WarmBase

log = logging.getLogger(__name__)


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
        self._warm: WarmBase | None = None  # Stable Diffusion, kept across kits and jobs
        self._preview_kit: tuple[tuple[Any, ...], EngineKit] | None = None
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
                kit = build_kit(job.settings, device=device, store=self.store,
                                warm=self._warm, **options)
                # Keep the kit's Stable Diffusion for the next kits (another preset, another
                # job); a kit on another pipeline or device replaces it, freeing the old one.
                self._warm = kit.layer1_warm
                self._kits[key] = kit
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
        files: identity scores of every face, also after sharing, PSNR, SSIM, largest change,
        how visible the change is on the faces."""
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
                           psnr=m.psnr, ssim=m.ssim, linf=m.linf, faces=len(m.per_face),
                           face_ssim=m.face_ssim, face_de_mean=m.face_de_mean,
                           face_de_p95=m.face_de_p95, face_jnd=m.face_jnd)


    def preview_face(self, source: Path, settings: ProtectionSettings, cancel: CancelToken,
                     progress: Callable[[int, int], None] | None = None) -> FacePreview:
        """The largest face of ``source`` protected with a few zero-shot steps at ``settings``'
        strength, on its crop only, by a kit's own layer-2 function (see
        ``engine.face_preview``); writes nothing. The preview's kit shares the loaded face
        models and never replaces the warm kit of the last job."""
        from dataclasses import replace

        from dladiff_app.core.imageio import load_image
        from dladiff_app.engine.face_preview import preview_face, preview_settings

        quick = preview_settings(settings)
        device = self._device("auto")  # the settings' device, as a job of the app uses
        key = (device, quick, self._store_state())
        with self._lock:
            if self._preview_kit is None or self._preview_kit[0] != key:
                detector, encoders = self._faces()
                options = {**self._kit_options, "detector": detector, "encoders": encoders}
                options.pop("pipeline_dir", None)  # the zero-shot shield only
                self._preview_kit = (key, build_kit(quick, device=device, store=self.store,
                                                    **options))
            kit = self._preview_kit[1]
        pixels = load_image(Path(source)).pixels
        result = preview_face(Path(source).name, pixels, kit, settings.layer2_steps, cancel,
                              progress)
        return replace(result, source=str(source))


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
            from dladiff_app.core.settings import load_settings
            from dladiff_app.engine.models.store import ModelStore

            store = ModelStore(root or models_dir(settings or load_settings()),
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
        if self.store.spec(model_id).fp16_files:
            from dladiff_app.engine.device import download_fp16_weights

            # The same files `dladiff models download` takes on this machine.
            self.store.prefer_fp16 = download_fp16_weights(
                self.settings.device if self.settings is not None else "auto")
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
           "EngineServices", "Layers", "_default_store", "_pipeline_identity", "build_kit",
           "build_services", "estimate_layer1_seconds", "make_scorer"]
