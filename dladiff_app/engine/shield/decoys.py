"""Decoy identities for the zero-shot shield: other people's faces to pull a protected face towards.

Pushing a face away from its own embedding alone finds directions peculiar to the networks being
attacked; pulling it at the same time towards another real person's embedding moves it into a
region that other face models also read as that other person, which transfers better to models
the shield never saw (measured in ``benchmarks/transfer.py``). The decoys are the faces in the
sample photos that ship inside the ``insightface`` package (a group photo of six people and one
portrait): nothing is downloaded, and nobody's own photos are used.

For each protected face the decoy is the one least like it (lowest mean cosine over the encoders
that use cosine, or the largest dlib distance), and never one the encoders take for the same
person.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from dladiff_app.engine.faces.score import same_person, similarity
from dladiff_app.engine.faces.types import Face, FaceDetector, IdentityEncoder

DECOY_FILES = ("t1.jpg", "Tom_Hanks_54745.png")


def decoy_photos() -> list[Path]:
    """The package photos decoys come from (empty when insightface's data is missing)."""
    try:
        spec = importlib.util.find_spec("insightface")
    except (ImportError, ValueError):
        return []
    if spec is None or spec.origin is None:
        return []
    folder = Path(spec.origin).parent / "data" / "images"
    return [folder / name for name in DECOY_FILES if (folder / name).is_file()]


@functools.cache
def _decoy_faces(detector: FaceDetector) -> tuple[tuple[np.ndarray, tuple[Face, ...]], ...]:
    from PIL import Image

    out = []
    for path in decoy_photos():
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        out.append((pixels, tuple(detector.detect(pixels))))
    return tuple(out)


def decoy_bank(detector: FaceDetector,
               encoders: Sequence[IdentityEncoder]) -> list[dict[str, torch.Tensor]]:
    """Every decoy face's embedding per encoder: ``bank[k][encoder.name]`` is (D,), detached.
    Faces are detected once per detector; embeddings are computed on each call."""
    bank = []
    with torch.no_grad():
        for pixels, faces in _decoy_faces(detector):  # type: ignore[arg-type]  # by identity
            image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None]
            for face in faces:
                bank.append({e.name: e.embed(image, face).detach() for e in encoders})
    return bank


def pick_decoy(target: Mapping[str, torch.Tensor], bank: Sequence[Mapping[str, torch.Tensor]],
               encoders: Sequence[IdentityEncoder]) -> Mapping[str, torch.Tensor] | None:
    """The decoy least like ``target`` (a face's clean embeddings) that no encoder takes for the
    same person; None when the bank has none."""
    best, best_score = None, np.inf
    for decoy in bank:
        values = [float(similarity(e, target[e.name], decoy[e.name])) for e in encoders]
        if any(same_person(e, v) for e, v in zip(encoders, values, strict=True)):
            continue
        # Likeness in [~-1, 1] for every metric: cosine as is, a distance as 1 - d/threshold.
        like = float(np.mean([v if e.metric != "euclidean" else 1.0 - v / e.threshold
                              for e, v in zip(encoders, values, strict=True)]))
        if like < best_score:
            best, best_score = decoy, like
    return best
