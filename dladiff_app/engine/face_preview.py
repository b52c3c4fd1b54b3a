"""A look before a long run: the largest face of one photo, protected as the real run would.

After choosing a strength, a person wants to see what it does to a face before spending minutes
or hours on an album. The preview runs the kit's own zero-shot shield (``EngineKit.layer2``,
what the runner calls) with the preset's own steps, stopping rule and visibility cap, on a crop
around the face only: it takes seconds to a minute per face on a CPU, and what it shows, the
look and each face model's verdict, is what the album run will give that face (a preview with
a fraction of the steps showed "same person" where the run hides the face). Nothing is
written.

Tensor contract: the photo is (H, W, 3) float32 RGB in [0, 1] (``load_image``); the shield sees
the crop as (1, 3, h, w) float32 on the CPU, like the runner hands it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import ModelMissingError, NoFaceError
from dladiff_app.core.imageio import to_uint8
from dladiff_app.core.presets import Layers, ProtectionSettings
from dladiff_app.core.services import FacePreview
from dladiff_app.core.visibility import face_visibility
from dladiff_app.engine.face_results import faces_jnd
from dladiff_app.engine.runner import EngineKit
from dladiff_app.engine.shield.face_region import shift_face

# Side of the crop the shield works on, in face-box sides: room for every encoder's chip and
# the feathered mask (which ends at 2 box sides), so the crop behaves like the whole photo.
CONTEXT_SIDES = 3.0
# Side of the crop shown, in face-box sides: the whole region the shield may change.
SHOWN_SIDES = 2.0


def preview_settings(settings: ProtectionSettings) -> ProtectionSettings:
    """``settings`` for the preview: the zero-shot shield only (the real run's steps), no
    polish; budget, step sizes, visibility target, EOT and seed unchanged."""
    return replace(settings, layers=Layers.ZEROSHOT, polish_steps=0,
                   layer2_steps=max(1, settings.layer2_steps))


def square_around(box: np.ndarray | tuple[float, ...], sides: float, width: int,
                  height: int) -> tuple[int, int, int, int]:
    """Slice bounds (x0, y0, x1, y1) of a square ``sides`` times the box's longer side, centred
    on the box, clipped to a ``width`` x ``height`` image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = max(x1 - x0, y1 - y0) * sides / 2
    return (max(0, int(np.floor(cx - half))), max(0, int(np.floor(cy - half))),
            min(width, int(np.ceil(cx + half))), min(height, int(np.ceil(cy + half))))


def preview_face(name: str, pixels: np.ndarray, kit: EngineKit, full_steps: int,
                 cancel: CancelToken,
                 progress: Callable[[int, int], None] | None = None) -> FacePreview:
    """Protect the largest face of ``pixels`` with ``kit`` (built for
    :func:`preview_settings`) and return the before/after crops and their figures.
    ``name``: the photo's file name, for messages; ``full_steps``: the real run's steps per
    face, to say how much of it the preview did."""
    started = time.monotonic()
    if kit.layer2 is None or kit.detector is None:
        raise ModelMissingError(kit.layer2_missing or "No face model is available for the "
                                "zero-shot shield, so there is nothing to preview.")
    cancel.check()
    faces = kit.detector.detect(pixels)
    if not faces:
        raise NoFaceError(f"No face found in {name}: there is no face to preview. Choose a "
                          "photo with a face.")
    face = max(faces, key=lambda f: f.area)
    h, w = pixels.shape[:2]
    cx0, cy0, cx1, cy1 = square_around(face.box, CONTEXT_SIDES, w, h)
    crop = np.ascontiguousarray(pixels[cy0:cy1, cx0:cx1], dtype=np.float32)
    local = shift_face(face, cx0, cy0)
    clean = torch.from_numpy(crop).permute(2, 0, 1)[None]

    def step(_stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(done, total)

    out = kit.layer2(clean, clean.clone(), [local], cancel, step)
    protected8 = to_uint8(out.protected[0].permute(1, 2, 0).numpy())
    box = tuple(float(v) for v in np.asarray(local.box, dtype=np.float64)[:4])
    vis = face_visibility(crop, protected8, [box])
    jnd = faces_jnd(crop, protected8, [box])
    scores = tuple(kit.score(crop, protected8.astype(np.float32) / np.float32(255.0)))
    sx0, sy0, sx1, sy1 = square_around(box, SHOWN_SIDES, crop.shape[1], crop.shape[0])
    return FacePreview(
        source=name, original=to_uint8(crop[sy0:sy1, sx0:sx1]).copy(),
        protected=protected8[sy0:sy1, sx0:sx1].copy(),
        box=(box[0] - sx0, box[1] - sy0, box[2] - sx0, box[3] - sy0),
        steps=out.steps_done, full_steps=full_steps, seconds=time.monotonic() - started,
        faces_in_photo=len(faces), face_ssim=vis.ssim if vis else None,
        face_de_mean=vis.de_mean if vis else None, face_de_p95=vis.de_p95 if vis else None,
        face_jnd=jnd, scores=scores)
