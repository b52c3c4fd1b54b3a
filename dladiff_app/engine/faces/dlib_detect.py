"""Offline face detection and landmarks with dlib (dlib-bin + the CC0 face_recognition_models).

Two detectors:

- ``"hog"`` (default): dlib's frontal HOG + linear SVM detector. On this project's 2-core CPU it
  found all 6 faces of insightface's ``t1.jpg`` (1280x886) in ~0.3 s and the astronaut's face in
  ~0.1 s; it finds frontal faces of at least ~80 px (40 px with one upsampling).
- ``"mmod"``: dlib's MMOD CNN detector (``mmod_human_face_detector.dat``): more robust to pose,
  but ~20 s for ``t1.jpg`` on the same CPU (measured under load), so it is opt-in.

Then dlib's 68-point shape predictor runs on the full-resolution photo; its points are kept as
``Face.dlib_shape`` (what dlib's face-chip alignment uses) and reduced to the insightface-order
``landmarks5``. Photos with a long side above ``max_side`` are searched on a downscaled copy and
the boxes mapped back before the landmarks are placed at full resolution.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dladiff_app.engine.faces.types import Face

# iBUG 68-point indices: eyes 36-41 (left in the image) and 42-47, nose tip 30, mouth corners.
_LEFT_EYE = slice(36, 42)
_RIGHT_EYE = slice(42, 48)
_NOSE_TIP = 30
_MOUTH_LEFT, _MOUTH_RIGHT = 48, 54


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float RGB in [0, 1] -> the 8-bit array dlib reads (rounded, contiguous)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    return np.ascontiguousarray(np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8))


def landmarks5_from_68(shape: np.ndarray) -> np.ndarray:
    """(68, 2) dlib points -> (5, 2) in insightface order: eye centres (image-left first), nose
    tip, mouth corners (image-left first)."""
    return np.stack([
        shape[_LEFT_EYE].mean(axis=0),
        shape[_RIGHT_EYE].mean(axis=0),
        shape[_NOSE_TIP],
        shape[_MOUTH_LEFT],
        shape[_MOUTH_RIGHT],
    ]).astype(np.float64)


def _box_from_rect(rect: Any) -> np.ndarray:
    """dlib rectangle (inclusive pixel indices) -> (x0, y0, x1, y1) edges in the pixel-centre
    convention of :mod:`types` (pixel i covers [i - 0.5, i + 0.5))."""
    return np.array([rect.left() - 0.5, rect.top() - 0.5, rect.right() + 0.5,
                     rect.bottom() + 0.5], dtype=np.float64)


def _rect_from_box(box: np.ndarray) -> Any:
    import dlib

    x0, y0, x1, y1 = (float(v) for v in box)
    return dlib.rectangle(int(round(x0 + 0.5)), int(round(y0 + 0.5)),
                          int(round(x1 - 0.5)), int(round(y1 - 0.5)))


@functools.lru_cache(maxsize=4)
def _shape_predictor(path: str) -> Any:
    import dlib

    return dlib.shape_predictor(path)


def _default_pack() -> Any:
    from dladiff_app.engine.models.dlib_pack import find_dlib_pack

    return find_dlib_pack()


def _shape(predictor: Any, image8: np.ndarray, rect: Any) -> np.ndarray:
    parts = predictor(image8, rect).parts()
    return np.array([[p.x, p.y] for p in parts], dtype=np.float64)


def dlib_shape_for_box(image: np.ndarray, box: np.ndarray,
                       predictor_path: Path | str | None = None) -> np.ndarray:
    """dlib's 68 landmarks (68, 2) for a face found by another detector.

    ``image``: (H, W, 3) float RGB [0, 1] (or uint8); ``box``: (x0, y0, x1, y1) in full-resolution
    pixels. dlib's predictor was trained on HOG boxes; a much tighter or looser box moves the
    points a little."""
    path = predictor_path or _default_pack().shape68
    return _shape(_shape_predictor(str(path)), to_uint8(image), _rect_from_box(box))


class DlibDetector:
    """``FaceDetector`` named "dlib": faces with dlib 68-point landmarks, largest first.

    ``mode``: "hog" (default, fast) or "mmod" (CNN, slow on CPU). ``upsample``: how many times
    dlib doubles the photo before searching (finds smaller faces, costs ~4x per step); None
    chooses 1 for photos whose long side is under 480 px and 0 otherwise. ``max_side``: photos
    with a longer side are searched on a copy downscaled to it. ``min_score``: detections scoring
    below it are dropped (HOG SVM margin, MMOD confidence; dlib's own default is 0).
    """

    name = "dlib"

    def __init__(self, mode: str = "hog", upsample: int | None = None, max_side: int = 1600,
                 min_score: float = 0.0, pack: Any = None) -> None:
        if mode not in ("hog", "mmod"):
            raise ValueError(f"mode must be 'hog' or 'mmod', got {mode!r}")
        import dlib

        self.mode = mode
        self.upsample = upsample
        self.max_side = max_side
        self.min_score = min_score
        pack = pack or _default_pack()
        self._predictor = _shape_predictor(str(pack.shape68))
        if mode == "hog":
            self._detector = dlib.get_frontal_face_detector()
        else:
            self._detector = dlib.cnn_face_detection_model_v1(str(pack.mmod))

    def _find(self, image8: np.ndarray, upsample: int) -> list[tuple[Any, float]]:
        if self.mode == "hog":
            rects, scores, _ = self._detector.run(image8, upsample, self.min_score)
            return list(zip(rects, scores, strict=True))
        return [(d.rect, float(d.confidence)) for d in self._detector(image8, upsample)
                if d.confidence >= self.min_score]

    def detect(self, image: np.ndarray) -> list[Face]:
        """``image``: (H, W, 3) float32 RGB in [0, 1]. Returns faces, largest first; empty
        when there is none."""
        import dlib

        image8 = to_uint8(image)
        h, w = image8.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = image8
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = np.asarray(Image.fromarray(image8).resize(size, Image.Resampling.BOX))
        upsample = self.upsample
        if upsample is None:
            upsample = 1 if max(small.shape[:2]) < 480 else 0

        faces = []
        for rect, score in self._find(small, upsample):
            if scale < 1.0:
                # map the box's pixel edges back to full resolution
                full = dlib.rectangle(
                    int(round((rect.left() - 0.5) / scale + 0.5)),
                    int(round((rect.top() - 0.5) / scale + 0.5)),
                    int(round((rect.right() + 0.5) / scale - 0.5)),
                    int(round((rect.bottom() + 0.5) / scale - 0.5)),
                )
            else:
                full = rect
            shape = _shape(self._predictor, image8, full)
            faces.append(Face(box=_box_from_rect(full), landmarks5=landmarks5_from_68(shape),
                              score=float(score), dlib_shape=shape))
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces
