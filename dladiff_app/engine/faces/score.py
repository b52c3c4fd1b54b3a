"""Identity scores between the faces of two photos (ISM_pro), one per identity encoder.

The subject is the largest face of the clean photo. Its counterpart in the other photo is found
by box overlap in relative coordinates (so a resized copy still matches); ``match="all"`` pairs
every clean face. Values are measured with the real encoders: cosine similarity (ArcFace, CLIP)
or Euclidean distance (dlib), with each encoder's "same person" threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from dladiff_app.core.results import IdentityScore
from dladiff_app.engine.device import to_device
from dladiff_app.engine.faces.types import Face, FaceDetector, IdentityEncoder, encoder_device

MIN_IOU = 0.3  # below this two boxes are not the same face position


@dataclass(frozen=True)
class FaceMatch:
    """A clean face, its counterpart in the other photo (None when absent) and the scores."""

    clean_face: Face | None
    other_face: Face | None
    scores: tuple[IdentityScore, ...]


def similarity(encoder: IdentityEncoder, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (``metric == "cosine"``) or Euclidean distance of two (D,) embeddings,
    as a differentiable 0-d tensor."""
    if encoder.metric == "cosine":
        return torch.nn.functional.cosine_similarity(a.reshape(1, -1), b.reshape(1, -1))[0]
    if encoder.metric == "euclidean":
        return torch.linalg.vector_norm(a - b)
    raise ValueError(f"encoder {encoder.name}: unknown metric {encoder.metric!r}")


def same_person(encoder: IdentityEncoder, value: float) -> bool:
    if encoder.metric == "cosine":
        return value >= encoder.threshold
    return value < encoder.threshold


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) float RGB [0, 1] numpy -> (1, 3, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]


def _relative_box(face: Face, shape: Sequence[int]) -> np.ndarray:
    h, w = shape[0], shape[1]
    return np.asarray(face.box, dtype=np.float64) / np.array([w, h, w, h], dtype=np.float64)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def match_faces(
    clean_faces: Sequence[Face], clean_shape: Sequence[int],
    other_faces: Sequence[Face], other_shape: Sequence[int],
    match: Literal["largest", "all"] = "largest",
    same_framing: bool = False,
) -> list[tuple[Face | None, Face | None]]:
    """Pairs (clean face, other face or None), largest clean face first.

    A pair needs box IoU >= :data:`MIN_IOU` in relative coordinates. The subject of
    ``"largest"`` falls back to the other photo's only face, or its largest, when nothing
    overlaps (a different framing of the same person), unless ``same_framing`` says the two
    photos show the same scene (a protected copy): then another person's face is never taken
    for the subject's.
    """
    if not clean_faces:
        return [(None, other_faces[0] if other_faces else None)]
    subjects = list(clean_faces) if match == "all" else [clean_faces[0]]
    free = list(range(len(other_faces)))  # indices: Face holds arrays, so no == on faces
    pairs: list[tuple[Face | None, Face | None]] = []
    for face in subjects:
        rel = _relative_box(face, clean_shape)
        best, best_iou = None, MIN_IOU
        for i in free:
            iou = box_iou(rel, _relative_box(other_faces[i], other_shape))
            if iou >= best_iou:
                best, best_iou = i, iou
        if best is None and match == "largest" and free and not same_framing:
            best = free[0]
        if best is not None:
            free.remove(best)
        pairs.append((face, None if best is None else other_faces[best]))
    return pairs


def _prepare_face(encoder: IdentityEncoder, image: np.ndarray, face: Face) -> Face:
    # dlib's chip is placed by dlib's own landmarks: add them to faces from other detectors.
    if encoder.name == "dlib" and face.dlib_shape is None:
        import importlib

        dlib_detect = importlib.import_module("dladiff_app.engine.faces.dlib_detect")
        shape = dlib_detect.dlib_shape_for_box(image, face.box)
        return replace(face, dlib_shape=np.asarray(shape, dtype=np.float64))
    return face


def score_pair(
    clean: np.ndarray, clean_face: Face, other: np.ndarray, other_face: Face,
    encoders: Sequence[IdentityEncoder],
) -> tuple[IdentityScore, ...]:
    """One :class:`IdentityScore` per encoder for two located faces (no gradient), each on
    its encoder's device (the photos cross to it once per device, pinned, without blocking)."""
    on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
    scores = []
    with torch.no_grad():
        for enc in encoders:
            dev = encoder_device(enc)
            if dev not in on:
                on[dev] = (to_device(to_tensor(clean), dev), to_device(to_tensor(other), dev))
            ct, ot = on[dev]
            a = enc.embed(ct, _prepare_face(enc, clean, clean_face))
            b = enc.embed(ot, _prepare_face(enc, other, other_face))
            value = float(similarity(enc, a, b))
            scores.append(IdentityScore(enc.name, enc.metric, value, float(enc.threshold),
                                        same_person(enc, value)))
    return tuple(scores)


def _missing(encoders: Sequence[IdentityEncoder], note: str) -> tuple[IdentityScore, ...]:
    return tuple(IdentityScore(e.name, e.metric, None, float(e.threshold), None, note)
                 for e in encoders)


def score_images(
    clean: np.ndarray,
    other: np.ndarray,
    detector: FaceDetector,
    encoders: Sequence[IdentityEncoder],
    match: Literal["largest", "all"] = "largest",
    labels: tuple[str, str] = ("the clean image", "the protected image"),
    same_framing: bool = False,
) -> list[FaceMatch]:
    """Identity scores between ``clean`` and ``other``.

    ``clean``, ``other``: (H, W, 3) float32 RGB in [0, 1] (sizes may differ). Faces are found
    with ``detector`` in each photo. Returns one :class:`FaceMatch` per subject (the largest
    clean face; every clean face with ``match="all"``). When a face is missing, the scores
    carry value None and a note such as "no face found in the protected image" (``labels``
    name the two photos in these notes). ``same_framing``: see :func:`match_faces`.
    """
    clean_faces = detector.detect(clean)
    other_faces = detector.detect(other)
    out = []
    for cf, of in match_faces(clean_faces, clean.shape, other_faces, other.shape, match,
                              same_framing):
        if cf is None:
            note = f"no face found in {labels[0]}"
            if of is None:
                note = f"no face found in {labels[0]} nor in {labels[1]}"
            out.append(FaceMatch(None, of, _missing(encoders, note)))
        elif of is None:
            note = (f"no face found in {labels[1]}" if not other_faces
                    else f"no face at this position in {labels[1]}")
            out.append(FaceMatch(cf, None, _missing(encoders, note)))
        else:
            out.append(FaceMatch(cf, of, score_pair(clean, cf, other, of, encoders)))
    return out
