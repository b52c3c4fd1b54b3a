"""The runner's :class:`EngineKit` built from real models: the shields, the face detector, the
identity encoders and the device, bound together (``build_kit``).

Layer 1 is a :class:`~dladiff_app.engine.shield.layer1_session.Layer1Session` (Stable
Diffusion loaded once and kept warm); layer 2 and the polish call their shields per photo. The
front ends reach this through ``engine.services``; tests and the benchmarks build kits here.

No torch at import time: the window must appear before the ML stack loads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import ModelMissingError
from dladiff_app.core.presets import ProtectionSettings
from dladiff_app.core.results import IdentityScore

if TYPE_CHECKING:
    import torch

    from dladiff_app.engine.faces.types import Face, FaceDetector, IdentityEncoder
    from dladiff_app.engine.models.store import ModelStore
    from dladiff_app.engine.runner import EngineKit, Layer2Output, StepFn
    from dladiff_app.engine.shield.layer1_session import WarmBase

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


def _layer2_fn(encoders: Sequence[IdentityEncoder], settings: ProtectionSettings,
               device: str) -> Any:
    """Layer 2 on ``device`` (where the encoders are): the runner's CPU photos cross once
    each way per photo."""
    from dladiff_app.engine.device import to_device
    from dladiff_app.engine.runner import Layer2Output
    from dladiff_app.engine.shield.layer2 import protect_faces

    def run(clean: torch.Tensor, start: torch.Tensor, faces: list[Face], cancel: CancelToken,
            step: StepFn) -> Layer2Output:
        pixels = clean[0].permute(1, 2, 0).numpy()
        faces = _with_dlib_shapes(pixels, faces, encoders)
        res = protect_faces(to_device(clean, device), to_device(start, device), faces,
                            list(encoders), settings, cancel=cancel,
                            progress=lambda i, n: step("layer2", i, n),
                            generator_seed=settings.seed)
        sims = "; ".join(", ".join(f"{k} {v:.3f}" for k, v in face.items())
                         for face in res.final_similarity)
        return Layer2Output(res.protected.cpu(), res.steps_done, tuple(res.warnings),
                            f"{len(faces)} face(s), {res.steps_done} steps; identity after: {sims}")
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
              cache_dir: Path | None = None, store: ModelStore | None = None,
              warm: WarmBase | None = None, micro_batch: int | None = None) -> EngineKit:
    """The real kit. Missing pieces become ``*_missing`` reasons, never exceptions, so a job
    without Stable Diffusion still runs the zero-shot shield (and says so); a ``pipeline_dir``
    given explicitly that is visibly broken raises :class:`ModelIntegrityError`.

    ``warm``: a Stable Diffusion base already loaded (or to be loaded once) for this
    pipeline and device, shared with other kits; ignored when it is another pipeline's.
    ``micro_batch``: layer 1's photos per pass (None: its default for the device).

    Models not given explicitly are looked up in ``store`` (default: the user's store, with the
    local copies saved in the settings). Every encoder, given or looked up, is placed on the
    run's device (``registry.place``), so layer 2, the polish and the scores run there; the
    detector runs there where its runtime can. The polish runs when both layers can run and
    ``settings.polish_steps > 0``."""
    from dladiff_app.engine.device import resolve_device
    from dladiff_app.engine.face_results import make_face_scorer
    from dladiff_app.engine.runner import EngineKit

    if pipeline_dir is not None and settings.layers.finetune:
        from dladiff_app.engine.models.loaders import check_pipeline_folder

        check_pipeline_folder(pipeline_dir)  # a folder named by the user: say now if it is broken
    info = resolve_device(device)
    from dladiff_app.engine.faces import registry

    if detector is None or encoders is None:
        store = store if store is not None else _default_store()
        detector = detector if detector is not None else registry.available_detector(
            store, device=info.torch_device)
        encoders = encoders if encoders is not None else registry.available_encoders(store)
    # One placement for found and given encoders alike.
    encoders = [registry.place(e, info.torch_device, info.autocast_dtype) for e in encoders]
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
        from dladiff_app.core.settings import load_settings

        cache_dir = default_cache(load_settings()) / "prior_lora"
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
    polish = (settings.layers.finetune and settings.layers.zeroshot and settings.polish_steps > 0
              and pipeline_dir is not None and bool(encoders))
    session = None
    if pipeline_dir is not None:
        from dladiff_app.engine.shield.layer1_session import Layer1Session

        if warm is not None and warm.key[:2] != (str(pipeline_dir), info.torch_device):
            warm = None  # another pipeline or device: this kit loads its own
        session = Layer1Session(pipeline_dir, settings, info, working_size=working_size,
                                cache_dir=cache_dir, keep_surrogates=polish, warm=warm,
                                micro_batch=micro_batch)
    return EngineKit(
        device_kind=info.kind, device_name=info.name, detector=detector,
        score=make_scorer(detector, encoders),
        score_faces=make_face_scorer(detector, encoders),
        layer1=session.protect_album if session is not None else None,
        layer1_missing=layer1_missing,
        layer2=_layer2_fn(encoders, settings, info.torch_device) if encoders else None,
        layer2_missing=layer2_missing,
        notices=notices,
        polish=(session.polish(encoders, settings,
                               lambda pixels, faces: _with_dlib_shapes(pixels, faces, encoders))
                if session is not None and polish else None),
        models=models,
        model_revisions={"sd_pipeline": models["sd_pipeline"]["revision"]
                         if models["sd_pipeline"] and "revision" in models["sd_pipeline"] else None,
                         "encoders": [e.name for e in encoders]},
        layer1_step_seconds=session.step_seconds if session is not None else None,
        layer1_warm=session.warm if session is not None else None,
    )


# The offline ArcFace-family encoders every install has (dev.py and the bundle install them):
# id -> the name the user reads.
_DEFAULT_OFFLINE = {"sface": "SFace", "edgeface": "EdgeFace"}


def _encoder_notices(store: ModelStore | None,
                     encoders: Sequence[IdentityEncoder]) -> tuple[str, ...]:
    """What the user should know about the offline ensemble, in one notice per job: without
    SFace or EdgeFace (the offline ArcFace-family models), the zero-shot shield fools dlib but
    much less the ArcFace models that attack tools use. FaceNet, optional, is not announced on
    every job: on the tuning photos it added little for 1.6x the time (README, "Decisions");
    the model list and the README say how to add it."""
    in_use = {e.name for e in encoders}
    if all(key in in_use for key in _DEFAULT_OFFLINE):
        return ()
    from dladiff_app.engine.faces import registry

    statuses = {s.name: s for s in registry.encoder_statuses(store or _default_store())}
    absent = [(_DEFAULT_OFFLINE[key], statuses[key]) for key in _DEFAULT_OFFLINE
              if key not in in_use and key in statuses]
    if not absent:
        return ()
    names = " and ".join(name for name, _ in absent)
    details = "; ".join(f"{name}: {s.reason if not s.available else 'it was not selected'}"
                        for name, s in absent)
    what = ("the offline ArcFace-family face models, are" if len(absent) > 1
            else "the offline ArcFace-family face model, is")
    return (f"{names}, {what} not in use ({details}). The zero-shot shield runs with the "
            "other models, but protects less against the ArcFace models that attack tools "
            "use.",)
