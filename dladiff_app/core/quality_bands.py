"""PSNR, SSIM and L-inf of big photos, computed band by band with the same result.

``core.quality`` works in float64 on whole images: on a 12 MP photo its SSIM alone holds a dozen
full-size float64 arrays (about 3 GB), more than the protection itself needs. Here the photo is
cut into horizontal bands and the per-band results are combined exactly:

- PSNR: the mean squared error is a mean over pixels, so band MSEs weighted by their pixel counts
  give the whole image's MSE (recovered from each band's PSNR, peak 1.0);
- SSIM: the score is the mean over window positions fully inside the image. Bands overlap by the
  window size minus one row, so every window position belongs to exactly one band, and the band
  means weighted by their window counts give the whole image's mean;
- L-inf: the maximum of the band maxima.

Inputs follow ``core.quality``: ``(H, W, 3)`` float in [0, 1] or uint8, same shape.
"""

from __future__ import annotations

import math

import numpy as np

from dladiff_app.core.quality import SSIM_WINDOW, linf_255, psnr, ssim

# Rows per band: about 24 MB per float64 array of a 4000-pixel-wide photo.
BAND_ROWS = 256


def _mse_of(psnr_db: float) -> float:
    return 0.0 if math.isinf(psnr_db) else 10.0 ** (-psnr_db / 10.0)


def banded_quality(a: np.ndarray, b: np.ndarray,
                   band_rows: int = BAND_ROWS) -> tuple[float, float, float]:
    """``(psnr, ssim, linf_255)`` of ``a`` vs ``b`` exactly as :mod:`core.quality` defines them,
    with memory bounded by ``band_rows`` rows at a time."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    h = a.shape[0]
    if h <= band_rows + SSIM_WINDOW:
        return psnr(a, b), ssim(a, b), linf_255(a, b)
    sq_err = ssim_sum = 0.0
    windows = 0
    worst = 0.0
    for top in range(0, h, band_rows):
        rows = slice(top, min(top + band_rows, h))
        n = rows.stop - rows.start
        sq_err += _mse_of(psnr(a[rows], b[rows])) * n
        worst = max(worst, linf_255(a[rows], b[rows]))
        # Windows whose top row lies in this band: rows top .. top + n - 1 (when they fit).
        stop = min(top + n + SSIM_WINDOW - 1, h)
        valid = stop - top - SSIM_WINDOW + 1
        if valid > 0:
            ssim_sum += ssim(a[top:stop], b[top:stop]) * valid
            windows += valid
    mse = sq_err / h
    return (math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)), ssim_sum / windows, worst
