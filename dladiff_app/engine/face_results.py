"""Identity scores for every face of a photo, so a group photo explains itself.

The runner measures each protected file twice: as written, and after the sharing transform
(JPEG + downscale, at another pixel size). Each measurement pairs every face of the clean photo
with the face at the same position in the other image (``faces.score.score_images`` with
``match="all"`` and ``same_framing``: another person's face is never scored as this one's). This
module joins the two measurements face by face (by box overlap in relative coordinates) into
:class:`FaceResult` records, and keeps the subject (the largest face) as the photo's headline
scores, exactly what the single-subject scorer reported before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dladiff_app.core.results import FaceResult, IdentityScore
from dladiff_app.core.visibility import FaceVisibility, face_visibility
from dladiff_app.engine.faces.score import MIN_IOU, box_iou
from dladiff_app.engine.faces.types import FaceDetector, IdentityEncoder

if TYPE_CHECKING:
    import torch

Box = tuple[float, float, float, float]
# One entry per face of the clean image, largest first: (box in the clean image's pixels, or
# None when the clean image has no face; the scores of that face in the other image).
FaceScores = list[tuple[Box | None, tuple[IdentityScore, ...]]]
# clean (H, W, 3) float32 [0, 1], other (H', W', 3) float32 [0, 1] -> FaceScores
FaceScoreFn = Callable[[np.ndarray, np.ndarray], FaceScores]



def make_face_scorer(detector: FaceDetector | None, encoders: Sequence[IdentityEncoder]
                     ) -> FaceScoreFn:
    """Scores of every clean face vs the face at its position in ``other`` (same scene)."""
    from dladiff_app.engine.faces.score import score_images

    def score(clean: np.ndarray, other: np.ndarray) -> FaceScores:
        if detector is None or not encoders:
            return []
        matches = score_images(clean, other, detector, encoders, match="all",
                               labels=("the original", "the protected image"), same_framing=True)
        out: FaceScores = []
        for m in matches:
            box = None if m.clean_face is None else tuple(
                float(v) for v in np.asarray(m.clean_face.box, dtype=np.float64)[:4])
            out.append((box, m.scores))  # type: ignore[arg-type]
        return out
    return score


def _relative(box: Box, shape: Sequence[int]) -> np.ndarray:
    h, w = shape[0], shape[1]
    return np.asarray(box, dtype=np.float64) / np.array([w, h, w, h], dtype=np.float64)


def join_faces(on_file: FaceScores, clean_shape: Sequence[int], on_shared: FaceScores,
               shared_shape: Sequence[int]) -> tuple[FaceResult, ...]:
    """One :class:`FaceResult` per clean face of ``on_file`` (largest first); its after-sharing
    scores are those of the face of ``on_shared`` at the same relative position (none when the
    shared copy's detector did not find it)."""
    free = [(i, _relative(b, shared_shape)) for i, (b, _) in enumerate(on_shared) if b is not None]
    out = []
    for box, scores in on_file:
        if box is None:
            continue
        rel = _relative(box, clean_shape)
        best, best_iou = None, MIN_IOU
        for i, other in free:
            iou = box_iou(rel, other)
            if iou >= best_iou:
                best, best_iou = i, iou
        shared: tuple[IdentityScore, ...] = ()
        if best is not None:
            shared = on_shared[best][1]
            free = [(i, r) for i, r in free if i != best]
        out.append(FaceResult(box=box, scores=scores, scores_after_sharing=shared))
    return tuple(out)


def subject_scores(found: FaceScores) -> tuple[IdentityScore, ...]:
    """The photo's headline scores: the largest face's (or the "no face" notes)."""
    return found[0][1] if found else ()


@dataclass(frozen=True)
class Measured:
    """What is measured on a protected file against its clean photo."""

    scores: tuple[IdentityScore, ...]
    scores_after_sharing: tuple[IdentityScore, ...]
    per_face: tuple[FaceResult, ...]
    psnr: float
    ssim: float
    linf: float
    # How visible the change is on the faces of ``per_face`` (None: no face measured).
    face: FaceVisibility | None = None
    # The most visible face's predicted visibility at 100% (JND; engine.visible_diff).
    face_jnd: float | None = None

    # The PhotoResult fields of ``face`` (None without a face).
    @property
    def face_ssim(self) -> float | None:
        return self.face.ssim if self.face else None

    @property
    def face_de_mean(self) -> float | None:
        return self.face.de_mean if self.face else None

    @property
    def face_de_p95(self) -> float | None:
        return self.face.de_p95 if self.face else None


def resize_like(pixels: np.ndarray, hw: tuple[int, ...]) -> np.ndarray:
    """A photo ((H, W, 3) float [0, 1] or uint8) at another size, as float32 [0, 1] (Lanczos on
    8 bits): the clean photo at the size a shared copy has, so faces line up for scoring."""
    if pixels.shape[:2] == tuple(hw):
        return pixels if pixels.dtype != np.uint8 else pixels.astype(np.float32) / 255.0
    from PIL import Image

    from dladiff_app.core.imageio import to_uint8

    img = Image.fromarray(to_uint8(pixels)).resize((hw[1], hw[0]), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.float32) / 255.0


# What ``core.quality.simulate_sharing`` shrinks a photo to (its default long side).
SHARE_LONG_SIDE = 1080


def shared_copy(saved: np.ndarray) -> np.ndarray:
    """``simulate_sharing(saved)``, the same pixels, without its full-size float64 copies when
    ``saved`` is 8-bit (the file as written): the photo is first shrunk exactly as that function
    would (same size rule, Lanczos on 8 bits), and the small copy, which it then leaves at its
    size, goes through it for the JPEG step. Float input goes through it unchanged."""
    from dladiff_app.core.quality import simulate_sharing

    h, w = saved.shape[:2]
    scale = SHARE_LONG_SIDE / max(h, w)
    if saved.dtype == np.uint8 and scale < 1.0:
        from PIL import Image

        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        saved = np.asarray(Image.fromarray(saved).resize(size, Image.Resampling.LANCZOS))
    return simulate_sharing(saved, long_side=SHARE_LONG_SIDE)


def measure_saved(clean: np.ndarray, saved: np.ndarray,
                  score: Callable[[np.ndarray, np.ndarray], list[IdentityScore]],
                  score_faces: FaceScoreFn | None,
                  views: tuple[np.ndarray, np.ndarray] | None = None) -> Measured:
    """Identity and image figures of ``saved`` (the file as written, decoded) against
    ``clean``, both (H, W, 3) RGB of one size, float32 in [0, 1] or ``saved`` as uint8 (the
    file's exact values at a quarter of the memory): on the file and after the sharing
    transform (JPEG q75 + 1080 px). ``views``: (clean, saved) float32 as the scorer should see
    them (a big photo downscaled alike; default: the photos themselves); face boxes are given
    in ``clean``'s pixels either way. ``score_faces`` (when given) scores every face;
    otherwise ``score`` gives the subject's scores only. PSNR/SSIM/L-inf are computed band by
    band (same values, bounded memory); the face-region visibility (``core.visibility``) on the
    faces of ``per_face``, on their crops only."""
    from dladiff_app.core.quality_bands import banded_quality

    clean_view, saved_view = views if views is not None else (
        clean, resize_like(saved, saved.shape[:2]))
    shared = shared_copy(saved)
    reference = resize_like(clean, shared.shape[:2])
    if score_faces is not None:
        on_file = score_faces(clean_view, saved_view)
        on_shared = score_faces(reference, shared)
        scores, scores_shared = subject_scores(on_file), subject_scores(on_shared)
        k = clean.shape[1] / clean_view.shape[1]
        on_file = [(None if b is None else (b[0] * k, b[1] * k, b[2] * k, b[3] * k), sc)
                   for b, sc in on_file]
        per_face = join_faces(on_file, clean.shape, on_shared, shared.shape)
    else:
        scores = tuple(score(clean_view, saved_view))
        scores_shared, per_face = tuple(score(reference, shared)), ()
    boxes = [f.box for f in per_face]
    face = face_visibility(clean, saved, boxes) if per_face else None
    return Measured(scores, scores_shared, per_face, *banded_quality(clean, saved), face=face,
                    face_jnd=faces_jnd(clean, saved, boxes) if per_face else None)


def _unit_crop(a: np.ndarray, rect: tuple[int, int, int, int]) -> torch.Tensor:
    """(1, 3, h, w) float32 [0, 1] tensor of ``a[y0:y1, x0:x1]``."""
    import torch

    from dladiff_app.core.quality import as_unit_float

    x0, y0, x1, y1 = rect
    part = as_unit_float(a[y0:y1, x0:x1], "image").astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(part)).permute(2, 0, 1)[None]


def faces_jnd(clean: np.ndarray, saved: np.ndarray, boxes: Sequence[Sequence[float]]) -> float | None:
    """The most visible face's figure (:func:`visible_diff.face_jnd`) of ``saved`` against
    ``clean`` ((H, W, 3) float [0, 1] or uint8), converting only the faces' regions."""
    from dladiff_app.core.visibility import widened_box
    from dladiff_app.engine.visible_diff import FACE_CONTEXT, face_jnd

    h, w = clean.shape[:2]
    worst = None
    for box in boxes:
        # The measure's own context: the box widened 1.5x, plus its pyramid margin.
        bx0, by0, bx1, by1 = widened_box(box, w, h)
        x0, y0 = max(0, bx0 - FACE_CONTEXT), max(0, by0 - FACE_CONTEXT)
        x1, y1 = min(w, bx1 + FACE_CONTEXT), min(h, by1 + FACE_CONTEXT)

        local = (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)
        value = face_jnd(_unit_crop(clean, (x0, y0, x1, y1)), _unit_crop(saved, (x0, y0, x1, y1)),
                         [local])
        if value is not None:
            worst = value if worst is None else max(worst, value)
    return worst
