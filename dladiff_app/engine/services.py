"""Real implementations of the engine services the front ends are given (``core.services``).

``build_kit`` binds the shields, the face detector, the identity encoders and the device into the
runner's :class:`EngineKit`; ``EngineProtectService`` keeps one kit per (device, pipeline) so
models stay loaded between jobs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import ModelMissingError
from dladiff_app.core.events import EventSink
from dladiff_app.core.jobs import ProtectJob
from dladiff_app.core.presets import Layers, ProtectionSettings
from dladiff_app.core.results import IdentityScore
from dladiff_app.core.services import DeviceSummary, JobSummary, ModelRow
from dladiff_app.engine.faces.types import Face, FaceDetector, IdentityEncoder
from dladiff_app.engine.runner import EngineKit, Layer2Output, StepFn, run_job

log = logging.getLogger(__name__)

# Measured on this project's reference CPU (2 threads, fp32, full SD 1.5 architecture, 512 px;
# see shared ENVIRONMENT.md "Costs measured on this CPU"): seconds per layer-1 PGD step and per
# LoRA step. Used for the "this will take hours" warning when no probe was run.
CPU_SECONDS_PER_PGD_STEP_512 = 21.8
CPU_SECONDS_PER_LORA_STEP_512 = 15.7


def _pipeline_identity(pipeline_dir: Path) -> dict[str, Any]:
    """What identifies the SD pipeline used (for the manifest): path, model_index.json hash,
    weight file sizes (a rename of the same folder keeps the hash)."""
    import hashlib

    info: dict[str, Any] = {"name": "stable-diffusion", "path": str(pipeline_dir)}
    index = pipeline_dir / "model_index.json"
    if index.is_file():
        info["revision"] = "model_index sha256:" + hashlib.sha256(index.read_bytes()).hexdigest()[:16]
    weights = sorted(pipeline_dir.rglob("*.safetensors"))
    info["weights_bytes"] = sum(p.stat().st_size for p in weights)
    return info


def _largest(faces: Sequence[Face]) -> Face | None:
    return max(faces, key=lambda f: f.area) if faces else None


def make_scorer(detector: FaceDetector | None, encoders: Sequence[IdentityEncoder]
                ) -> Callable[[np.ndarray, np.ndarray], list[IdentityScore]]:
    """Identity of the subject (largest face) in ``clean`` vs in ``other``, per encoder.

    Both images (H, W, 3) float32 RGB [0, 1], sizes may differ; each is detected on its own, so
    a protection that also hides the face shows as "no face found in the protected image"."""
    from dladiff_app.engine.faces.score import score_images

    def score(clean: np.ndarray, other: np.ndarray) -> list[IdentityScore]:
        if detector is None or not encoders:
            return []
        matches = score_images(clean, other, detector, encoders, match="largest",
                               labels=("the original", "the protected image"))
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


def _layer1_fn(pipeline_dir: Path, settings: ProtectionSettings, device: Any,
               working_size: int | None, cache_dir: Path | None) -> Any:
    from dladiff_app.engine.shield.layer1 import protect_album_layer1

    def run(images: list[torch.Tensor], cancel: CancelToken, step: StepFn
            ) -> tuple[list[torch.Tensor], str]:
        res = protect_album_layer1(images, pipeline_dir, settings, device=device,
                                   working_size=working_size, cache_dir=cache_dir,
                                   cancel=cancel, progress=step)
        st = res.stats
        note = (f"{len(images)} photo(s) at {st.working_size} px; surrogate denoising loss "
                + (f"{st.dual_loss_per_round[0]:.4f} -> {st.dual_loss_per_round[-1]:.4f}"
                   if st.dual_loss_per_round else "not recorded")
                + ("; prior surrogate reused from cache" if res.prior_cache_hit else ""))
        return res.protected, note
    return run


def _layer2_fn(encoders: Sequence[IdentityEncoder], settings: ProtectionSettings) -> Any:
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


def build_kit(settings: ProtectionSettings, *, device: str = "auto",
              pipeline_dir: Path | None = None, detector: FaceDetector | None = None,
              encoders: Sequence[IdentityEncoder] | None = None, working_size: int | None = None,
              cache_dir: Path | None = None) -> EngineKit:
    """The real kit. Missing pieces become ``*_missing`` reasons, never exceptions, so a job
    without Stable Diffusion still runs the zero-shot shield (and says so)."""
    from dladiff_app.engine.device import resolve_device

    info = resolve_device(device)
    if detector is None or encoders is None:
        from dladiff_app.engine.faces import registry

        detector = detector if detector is not None else registry.available_detector()
        encoders = encoders if encoders is not None else registry.available_encoders()
    layer1_missing = ""
    if pipeline_dir is None and settings.layers.finetune:
        try:
            from dladiff_app.core.paths import models_dir
            from dladiff_app.engine.models.store import ModelStore

            pipeline_dir = ModelStore(models_dir()).path("sd15")
        except ModelMissingError as exc:
            layer1_missing = (f"The fine-tuning shield was skipped: {exc} Protect with "
                              "--layers zeroshot to run only the zero-shot shield.")
    if cache_dir is None:
        from dladiff_app.core.paths import cache_dir as default_cache

        cache_dir = default_cache() / "prior_lora"
    layer2_missing = "" if encoders else (
        "The zero-shot shield was skipped: no identity encoder is available (install "
        "face_recognition_models for the offline one, or download buffalo_l).")
    models: dict[str, Any] = {
        "sd_pipeline": _pipeline_identity(pipeline_dir) if pipeline_dir is not None else None,
        "detector": getattr(detector, "name", None),
        "encoders": [{"name": e.name, "path": getattr(e, "source_path", None),
                      "revision": getattr(e, "revision", None)} for e in encoders],
    }
    return EngineKit(
        device_kind=info.kind, device_name=info.name, detector=detector,
        score=make_scorer(detector, encoders),
        layer1=(_layer1_fn(pipeline_dir, settings, info, working_size, cache_dir)
                if pipeline_dir is not None else None),
        layer1_missing=layer1_missing,
        layer2=_layer2_fn(encoders, settings) if encoders else None,
        layer2_missing=layer2_missing,
        models=models,
        model_revisions={"sd_pipeline": models["sd_pipeline"]["revision"]
                         if models["sd_pipeline"] and "revision" in models["sd_pipeline"] else None,
                         "encoders": [e.name for e in encoders]},
    )


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
    """``ProtectService`` over :func:`run_job`; kits are cached so models stay warm."""

    def __init__(self, **kit_options: Any) -> None:
        self._kit_options = kit_options
        self._kits: dict[tuple[Any, ...], EngineKit] = {}

    def kit_for(self, job: ProtectJob) -> EngineKit:
        key = (job.device, job.settings, str(self._kit_options.get("pipeline_dir")))
        if key not in self._kits:
            self._kits.clear()  # one warm kit at a time: SD weights are big
            self._kits[key] = build_kit(job.settings, device=job.device, **self._kit_options)
        return self._kits[key]

    def protect(self, job: ProtectJob, sink: EventSink, cancel: CancelToken) -> JobSummary:
        return run_job(job, self.kit_for(job), sink, cancel)

    def estimate_seconds(self, n_photos: int, settings: ProtectionSettings,
                         megapixels: float = 12.0) -> float:
        from dladiff_app.engine.device import resolve_device

        kind = resolve_device(os.environ.get("DLADIFF_DEVICE", "auto")).kind
        est = estimate_layer1_seconds(settings, n_photos, kind)
        return float(est) if est is not None else float("nan")


class EngineDeviceService:
    def describe(self, requested: str = "auto") -> DeviceSummary:
        from dladiff_app.engine.device import resolve_device

        info = resolve_device(requested)
        return DeviceSummary(info.kind, info.name, info.memory_bytes, info.reason)


class EngineModelService:
    """``ModelService`` over the model store and registry."""

    def __init__(self, root: Path | None = None) -> None:
        from dladiff_app.core.paths import models_dir
        from dladiff_app.engine.models.store import ModelStore

        self.store = ModelStore(root or models_dir())

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
        self.store.use_local(model_id, Path(path))


__all__ = ["EngineDeviceService", "EngineModelService", "EngineProtectService", "Layers",
           "build_kit", "estimate_layer1_seconds", "make_scorer"]
