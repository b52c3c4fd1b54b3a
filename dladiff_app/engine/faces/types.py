"""Shared face types and the two protocols every detector and identity encoder implements.

Image contract used throughout ``engine.faces``: a full-resolution photo as a torch tensor of
shape (1, 3, H, W), float32, RGB, values in [0, 1], or as a numpy array (H, W, 3) float32 in
[0, 1] (RGB) where noted. Coordinates are pixel coordinates of that full-resolution image with
the pixel-centre convention of OpenCV/insightface (pixel (0, 0) covers [-0.5, 0.5)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@dataclass(frozen=True)
class Face:
    """One detected face.

    ``box``: (4,) float (x0, y0, x1, y1). ``landmarks5``: (5, 2) float in insightface order
    (left eye centre, right eye centre as seen in the image from left to right, nose tip, left
    mouth corner, right mouth corner): what ArcFace/CLIP alignment uses. ``dlib_shape``: the
    landmarks of dlib's shape predictor, (5, 2) or (68, 2), when the face came from (or was
    refined by) dlib: what dlib's chip extraction uses. ``score``: detector confidence.
    """

    box: np.ndarray
    landmarks5: np.ndarray
    score: float = 1.0
    dlib_shape: np.ndarray | None = field(default=None, compare=False)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = (float(v) for v in self.box)
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


@runtime_checkable
class FaceDetector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Face]:
        """``image``: (H, W, 3) float32 RGB in [0, 1]. Returns faces, largest first (may be
        empty: a photo without a face is a normal result, not an error)."""
        ...


@runtime_checkable
class IdentityEncoder(Protocol):
    """A differentiable identity encoder (a ``torch.nn.Module`` in practice).

    ``metric`` is ``"cosine"`` (same person when cos >= threshold) or ``"euclidean"`` (dlib:
    same person when distance < threshold).
    """

    name: str
    metric: str
    threshold: float

    def embed(self, image: torch.Tensor, face: Face, flip: bool = False) -> torch.Tensor:
        """``image``: (1, 3, H, W) float32 RGB in [0, 1], full resolution, may require grad.
        Aligns ``face`` with a differentiable warp and returns its embedding, shape (D,),
        differentiable with respect to ``image``. ``flip``: embed the mirror image of the
        aligned face (what recognizers that average a face with its mirror see)."""
        ...


def encoder_device(encoder: object) -> torch.device:
    """The device an encoder's weights live on (its first parameter or buffer); the CPU for
    an encoder without weights (a test's fake). Images go there before ``embed``."""
    for getter in ("parameters", "buffers"):
        tensors = getattr(encoder, getter, None)
        if callable(tensors):
            first = next(iter(tensors()), None)
            if isinstance(first, torch.Tensor):
                return first.device
    return torch.device("cpu")
