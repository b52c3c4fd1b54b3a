"""How much a protection changes the *shading* of a face: the low-frequency part of the change
that the face SSIM (``core.visibility``) misses.

Session 9 found that the SSIM-shaped penalty moves part of the change into smooth shading on the
forehead, cheeks and nose. The eye sees it; the full-scale luma SSIM and the mean colour
difference barely do (``results/face_crop_obama_s9_eps8_eps12.png``: 12/255 at Medium's face
SSIM looks clearly stronger than Medium, with the same SSIM and dE). Two figures per photo,
over the faces' boxes widened 1.5x (area-weighted):

- ``shade``: the mean absolute value of the luma change low-passed by a Gaussian of sigma 4 px,
  in 1/255 (smooth shading, not texture);
- ``ssim4``: the luma SSIM after a 4x box downscale of both crops (the change as seen from
  further away, where shading dominates).

Benchmark-only: the app does not use them, and no shield value is tuned on them. Inputs are
(H, W, 3) RGB float in [0, 1]; boxes (x0, y0, x1, y1) in pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SHADE_SIGMA = 4.0
COARSE = 4


def _box_down(x: np.ndarray, k: int) -> np.ndarray:
    """(h // k, w // k, 3) mean of each k x k block of an (h, w, 3) crop."""
    h, w = (x.shape[0] // k) * k, (x.shape[1] // k) * k
    return x[:h, :w].reshape(h // k, k, w // k, k, -1).mean(axis=(1, 3))


def face_shading(clean: np.ndarray, protected: np.ndarray, boxes: Sequence[Sequence[float]]
                 ) -> tuple[float, float] | None:
    """(shade, ssim4) of ``protected`` against ``clean`` on the faces (None without a face big
    enough for a 4x-downscaled SSIM window). Luma and SSIM are the face SSIM's own
    (``core.visibility.luma`` / ``luma_ssim``)."""
    from scipy.ndimage import gaussian_filter

    from dladiff_app.core.visibility import luma, luma_ssim, widened_box

    h, w = clean.shape[:2]
    shades, coarse, areas = [], [], []
    for box in boxes:
        x0, y0, x1, y1 = widened_box(box, w, h)
        if min(x1 - x0, y1 - y0) < 7 * COARSE:
            continue
        a, b = clean[y0:y1, x0:x1], protected[y0:y1, x0:x1]
        shades.append(float(np.abs(gaussian_filter(255.0 * (luma(b) - luma(a)),
                                                   SHADE_SIGMA)).mean()))
        coarse.append(luma_ssim(_box_down(np.asarray(a, dtype=np.float64), COARSE),
                                _box_down(np.asarray(b, dtype=np.float64), COARSE)))
        areas.append((x1 - x0) * (y1 - y0))
    if not areas:
        return None
    return float(np.average(shades, weights=areas)), float(np.average(coarse, weights=areas))
