"""How visible a protection is where it matters: on the faces.

The zero-shot shield spends its budget on the faces, so whole-photo PSNR/SSIM flatter it. These
figures are measured on each face's box widened 1.5x (METHOD.md, "Transfer and visibility"):

- SSIM on luminance (BT.601 luma), the structural change the eye reads as texture;
- CIEDE2000 colour difference per pixel (mean and 95th percentile); about 2.3 is the usual
  just-noticeable difference.

Inputs are ``(H, W, 3)`` RGB, float in [0, 1] or uint8 (see :mod:`core.quality`); boxes are
(x0, y0, x1, y1) in that image's pixels. numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dladiff_app.core.quality import as_unit_float
from dladiff_app.core.quality_bands import banded_quality

FACE_WIDEN = 1.5
_LUMA = np.array([0.299, 0.587, 0.114])
# sRGB (D65) -> XYZ, and the D65 white point (IEC 61966-2-1, CIE 15).
_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]])
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


@dataclass(frozen=True)
class FaceVisibility:
    """Visibility of the change on the faces: ``ssim`` (luma SSIM, 1 = unchanged), ``de_mean``
    and ``de_p95`` (CIEDE2000 over the face pixels), ``faces`` counted."""

    ssim: float
    de_mean: float
    de_p95: float
    faces: int


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` sRGB in [0, 1] -> CIE L*a*b* (D65), float64."""
    rgb = np.asarray(rgb, dtype=np.float64)
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _RGB_TO_XYZ.T / _WHITE_D65
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16) / 116)
    L = 116 * f[..., 1] - 16
    a = 500 * (f[..., 0] - f[..., 1])
    b = 200 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference (Sharma, Wu, Dalal 2005, kL = kC = kH = 1) between two
    ``(..., 3)`` L*a*b* arrays; returns ``(...)``."""
    L1, a1, b1 = np.moveaxis(np.asarray(lab1, dtype=np.float64), -1, 0)
    L2, a2, b2 = np.moveaxis(np.asarray(lab2, dtype=np.float64), -1, 0)
    c_bar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_bar**7 / (c_bar**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    dLp = L2 - L1
    dCp = c2p - c1p
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(c1p * c2p == 0, 0.0, dh)
    dHp = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh) / 2)
    Lp_bar = (L1 + L2) / 2
    Cp_bar = (c1p + c2p) / 2
    hsum = h1p + h2p
    hp_bar = np.where(np.abs(h1p - h2p) > 180,
                      np.where(hsum < 360, (hsum + 360) / 2, (hsum - 360) / 2), hsum / 2)
    hp_bar = np.where(c1p * c2p == 0, hsum, hp_bar)
    t = (1 - 0.17 * np.cos(np.radians(hp_bar - 30)) + 0.24 * np.cos(np.radians(2 * hp_bar))
         + 0.32 * np.cos(np.radians(3 * hp_bar + 6)) - 0.20 * np.cos(np.radians(4 * hp_bar - 63)))
    d_theta = 30 * np.exp(-(((hp_bar - 275) / 25) ** 2))
    r_c = 2 * np.sqrt(Cp_bar**7 / (Cp_bar**7 + 25.0**7))
    s_l = 1 + 0.015 * (Lp_bar - 50) ** 2 / np.sqrt(20 + (Lp_bar - 50) ** 2)
    s_c = 1 + 0.045 * Cp_bar
    s_h = 1 + 0.015 * Cp_bar * t
    r_t = -np.sin(np.radians(2 * d_theta)) * r_c
    return np.sqrt((dLp / s_l) ** 2 + (dCp / s_c) ** 2 + (dHp / s_h) ** 2
                   + r_t * (dCp / s_c) * (dHp / s_h))


def widened_box(box: Sequence[float], width: int, height: int,
                widen: float = FACE_WIDEN) -> tuple[int, int, int, int]:
    """``box`` scaled by ``widen`` about its centre, as slice bounds clipped to the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hw, hh = (x1 - x0) * widen / 2, (y1 - y0) * widen / 2
    return (max(0, int(np.floor(cx - hw))), max(0, int(np.floor(cy - hh))),
            min(width, int(np.ceil(cx + hw)) + 1), min(height, int(np.ceil(cy + hh)) + 1))


# Rows of a face crop converted to float64 at a time (bounded memory on big faces).
BAND_ROWS = 256


def luma(x: np.ndarray) -> np.ndarray:
    """(h, w) float64 BT.601 luma in [0, 1] of an (h, w, 3) crop (uint8 or float), band by
    band."""
    out = np.empty(x.shape[:2], dtype=np.float64)
    for top in range(0, x.shape[0], BAND_ROWS):
        rows = slice(top, top + BAND_ROWS)
        out[rows] = as_unit_float(x[rows], "image") @ _LUMA
    return out


def luma_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (core.quality's) of the luma of two crops, computed by bands: the luma is seen as
    three identical channels without copying it three times."""
    ya, yb = luma(a), luma(b)
    return banded_quality(np.broadcast_to(ya[..., None], (*ya.shape, 3)),
                          np.broadcast_to(yb[..., None], (*yb.shape, 3)))[1]


def face_visibility(clean: np.ndarray, protected: np.ndarray,
                    boxes: Sequence[Sequence[float]], widen: float = FACE_WIDEN
                    ) -> FaceVisibility | None:
    """Visibility of ``protected`` against ``clean`` on the faces in ``boxes`` (None when there
    is no face). SSIM is averaged over faces weighted by area; the colour difference is taken
    over the union of the face regions (a pixel two widened boxes share counts once).

    Only the face regions are converted to float, a band of rows at a time: a 12 MP photo
    given as uint8 is never copied whole (the runner measures its saved file this way)."""
    a, b = np.asarray(clean), np.asarray(protected)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"clean must be (H, W, 3), got shape {a.shape}")
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    h, w = a.shape[:2]
    rects = [r for r in (widened_box(box, w, h, widen) for box in boxes)
             if r[2] - r[0] >= 11 and r[3] - r[1] >= 11]
    if not rects:
        return None
    ssims = [luma_ssim(a[y0:y1, x0:x1], b[y0:y1, x0:x1]) for x0, y0, x1, y1 in rects]
    areas = [(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in rects]
    # Union of the regions: a mask over their bounding rectangle, each pixel claimed once.
    ux0, uy0 = min(r[0] for r in rects), min(r[1] for r in rects)
    ux1, uy1 = max(r[2] for r in rects), max(r[3] for r in rects)
    claimed = np.zeros((uy1 - uy0, ux1 - ux0), dtype=bool)
    de_parts: list[np.ndarray] = []
    for x0, y0, x1, y1 in rects:
        for top in range(y0, y1, BAND_ROWS):
            bottom = min(top + BAND_ROWS, y1)
            free = ~claimed[top - uy0:bottom - uy0, x0 - ux0:x1 - ux0]
            if not free.any():
                continue
            ca = as_unit_float(a[top:bottom, x0:x1], "clean")[free]
            cb = as_unit_float(b[top:bottom, x0:x1], "protected")[free]
            # float32 keeps the per-pixel differences of a big face at half the memory.
            de_parts.append(ciede2000(srgb_to_lab(ca), srgb_to_lab(cb)).astype(np.float32))
            claimed[top - uy0:bottom - uy0, x0 - ux0:x1 - ux0] = True
    de = np.concatenate(de_parts)
    return FaceVisibility(ssim=float(np.average(ssims, weights=areas)),
                          de_mean=float(de.mean(dtype=np.float64)),
                          de_p95=float(np.percentile(de, 95)), faces=len(ssims))
