"""Where the zero-shot shield works: padded crops around faces and feathered masks inside them.

The shield never touches the whole photo. Each face gets a crop large enough to hold everything
an identity encoder samples (its aligned chip, which reaches well beyond the detector's box) plus
room for the EOT blur and shifts; overlapping crops of a group photo are merged so that every
pixel belongs to exactly one crop. Inside a crop, a feathered mask (1 on the enlarged face box,
falling smoothly to 0) confines the update, so the perturbation has no visible hard edge.

Coordinates: full-resolution pixel coordinates, pixel-centre convention of ``faces.types``.
Boxes here are integer ``(x0, y0, x1, y1)`` with exclusive ``x1``/``y1`` (slice bounds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from dladiff_app.engine.faces.types import Face

# Crops start on multiples of this, so an encoder that builds an image pyramid (dlib's chip
# extraction halves the image repeatedly) sees the same pyramid samples in the crop as in the
# full photo: the crop is then exact, not an approximation of the encoder's view.
CROP_ALIGN = 32


@dataclass(frozen=True)
class FaceRegion:
    """One crop of the photo and the faces inside it.

    ``box``: integer (x0, y0, x1, y1) slice bounds in the full photo. ``faces``: indices into the
    caller's face list. ``local_faces``: the same faces in crop coordinates.
    """

    box: tuple[int, int, int, int]
    faces: tuple[int, ...]
    local_faces: tuple[Face, ...]

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) full photo -> (N, C, h, w) view of this region (no copy)."""
        x0, y0, x1, y1 = self.box
        return image[..., y0:y1, x0:x1]


def face_extent(face: Face) -> tuple[float, float, float, float]:
    """Bounding box of the face's box and all of its landmarks (dlib's chip follows its own
    landmarks, which can reach beyond the detector box)."""
    pts = [np.asarray(face.box, dtype=np.float64).reshape(2, 2),
           np.asarray(face.landmarks5, dtype=np.float64).reshape(-1, 2)]
    if face.dlib_shape is not None:
        pts.append(np.asarray(face.dlib_shape, dtype=np.float64).reshape(-1, 2))
    allp = np.concatenate(pts, axis=0)
    return (float(allp[:, 0].min()), float(allp[:, 1].min()),
            float(allp[:, 0].max()), float(allp[:, 1].max()))


def enlarge_box(box: Sequence[float], factor: float, margin: float = 0.0
                ) -> tuple[float, float, float, float]:
    """Scale a box about its centre so that each side is ``factor`` times the longer side (a
    square: chips are square and may be rotated), plus ``margin`` pixels on every side."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = max(x1 - x0, y1 - y0) * factor / 2 + margin
    return cx - half, cy - half, cx + half, cy + half


def _snap(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    x0 = max(0, math.floor(box[0] / CROP_ALIGN) * CROP_ALIGN)
    y0 = max(0, math.floor(box[1] / CROP_ALIGN) * CROP_ALIGN)
    x1 = min(width, math.ceil(box[2]))
    y1 = min(height, math.ceil(box[3]))
    return x0, y0, x1, y1


def _overlap(a: Sequence[int], b: Sequence[int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _union(a: Sequence[int], b: Sequence[int]) -> tuple[int, int, int, int]:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def shift_face(face: Face, dx: float, dy: float) -> Face:
    """The same face in a coordinate frame whose origin is at (dx, dy) of the old one."""
    off = np.array([dx, dy], dtype=np.float64)
    box = np.asarray(face.box, dtype=np.float64) - np.tile(off, 2)
    lm = np.asarray(face.landmarks5, dtype=np.float64) - off
    shape = None if face.dlib_shape is None else np.asarray(face.dlib_shape, np.float64) - off
    return replace(face, box=box.astype(np.asarray(face.box).dtype),
                   landmarks5=lm.astype(np.asarray(face.landmarks5).dtype),
                   dlib_shape=None if shape is None
                   else shape.astype(np.asarray(face.dlib_shape).dtype))


def scale_face(face: Face, origin: tuple[float, float], factor: tuple[float, float]) -> Face:
    """The same face in a view that resampled the photo: pixel ``origin`` (x, y) of the old
    frame is the top-left pixel of the view, and ``factor`` (fx, fy) is view pixels per old
    pixel. Pixel-centre convention on both sides, the one of ``F.interpolate(...,
    align_corners=False)``: ``p' = (p - origin + 0.5) * factor - 0.5``."""
    o = np.array(origin, dtype=np.float64)
    k = np.array(factor, dtype=np.float64)

    def move(p: np.ndarray) -> np.ndarray:
        pts = np.asarray(p, dtype=np.float64).reshape(-1, 2)
        return ((pts - o + 0.5) * k - 0.5).reshape(np.shape(p))

    return replace(face, box=move(face.box), landmarks5=move(face.landmarks5),
                   dlib_shape=None if face.dlib_shape is None else move(face.dlib_shape))


def merge_boxes(boxes: Sequence[tuple[int, int, int, int]], width: int, height: int
                ) -> list[tuple[tuple[int, int, int, int], list[int]]]:
    """Merge overlapping boxes until none overlap: [(union box, indices of its boxes)]."""
    groups: list[tuple[tuple[int, int, int, int], list[int]]] = [
        (b, [i]) for i, b in enumerate(boxes)
    ]
    merged = True
    while merged:
        merged = False
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                if _overlap(groups[i][0], groups[j][0]):
                    box = _snap(_union(groups[i][0], groups[j][0]), width, height)
                    groups[i] = (box, groups[i][1] + groups[j][1])
                    del groups[j]
                    merged = True
                    break
            if merged:
                break
    return [(box, sorted(idx)) for box, idx in groups]


def region_for(box: tuple[int, int, int, int], idx: Sequence[int], faces: Sequence[Face]
               ) -> FaceRegion:
    """The :class:`FaceRegion` of ``box`` holding ``faces[i]`` for ``i`` in ``idx``."""
    local = tuple(shift_face(faces[i], box[0], box[1]) for i in idx)
    return FaceRegion(box=box, faces=tuple(idx), local_faces=local)


def face_regions(faces: Sequence[Face], width: int, height: int, *, context: float = 2.6,
                 margin: int = 16) -> list[FaceRegion]:
    """Crops around ``faces`` in a ``width`` x ``height`` photo, overlapping crops merged.

    ``context`` is the crop side over the face's extent: dlib's 150 px chip spans 1.5x the
    landmark extent and can be rotated (x sqrt 2), hence > 2.1. ``margin`` pixels more hold the
    EOT blur and shift. :func:`dladiff_app.engine.shield.layer2` verifies that each encoder
    gives the same embedding on the crop as on the full photo and widens the crop if not.
    """
    boxes = [_snap(enlarge_box(face_extent(f), context, margin), width, height) for f in faces]
    return [region_for(box, idx, faces) for box, idx in merge_boxes(boxes, width, height)]


def feathered_mask(region_size: tuple[int, int], faces: Sequence[Face], *,
                   enlarge: float = 1.5, feather: float = 0.25) -> torch.Tensor:
    """Soft mask over a crop: (1, 1, h, w) float32 in [0, 1].

    ``region_size`` is (h, w); ``faces`` are in crop coordinates. For each face, the ellipse
    inscribed in the box enlarged ``enlarge`` times is 1 inside and falls to 0 with a
    raised-cosine ramp ``feather`` times the box size wide; faces combine by maximum. A soft edge keeps the
    perturbation from drawing a visible rectangle on the photo.
    """
    h, w = region_size
    ys = torch.arange(h, dtype=torch.float32).view(-1, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, -1)
    mask = torch.zeros(h, w)
    for f in faces:
        x0, y0, x1, y1 = (float(v) for v in np.asarray(f.box).reshape(-1))
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        ax = max(1.0, (x1 - x0) * enlarge / 2)
        ay = max(1.0, (y1 - y0) * enlarge / 2)
        # Normalised radius: 1 on the ellipse inscribed in the enlarged box; the ramp is
        # ``feather`` box sizes wide, so the mask ends at (enlarge + 2 * feather) box sizes,
        # well inside a crop of ``face_regions``' default context.
        r = torch.sqrt(((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2)
        t = ((r - 1.0) / max(2 * feather / enlarge, 1e-3)).clamp(0.0, 1.0)
        mask = torch.maximum(mask, 0.5 * (1.0 + torch.cos(math.pi * t)))
    return mask.view(1, 1, h, w)


def jitter_face(face: Face, gen: torch.Generator, amount: float) -> Face:
    """The same face with its landmarks moved by a random similarity transform about the box
    centre: shift up to ``amount`` box sides, scale by 1 +- ``amount``, rotation up to
    ``amount`` * 90 degrees. Stands for another detector's landmarks (attack tools align with
    their own, a few pixels off ours); draws four numbers from ``gen`` whatever ``amount``."""
    u = torch.rand(4, generator=gen).numpy().astype(np.float64) * 2 - 1
    if amount <= 0:
        return face
    box = np.asarray(face.box, dtype=np.float64)
    side = max(1.0, float(box[2] - box[0]), float(box[3] - box[1]))
    centre = (box[:2] + box[2:]) / 2
    theta = np.radians(u[0] * amount * 90.0)
    k = 1.0 + u[1] * amount
    rot = k * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    shift = u[2:] * amount * side

    def move(p: np.ndarray) -> np.ndarray:
        pts = np.asarray(p, dtype=np.float64).reshape(-1, 2)
        return ((pts - centre) @ rot.T + centre + shift).reshape(np.shape(p))

    return replace(face, landmarks5=move(face.landmarks5),
                   dlib_shape=None if face.dlib_shape is None else move(face.dlib_shape))
