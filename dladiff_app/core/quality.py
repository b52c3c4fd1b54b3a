"""Image quality metrics (PSNR, SSIM, L-inf) and the "posted on a social network" transform.

All functions take ``(H, W, 3)`` RGB arrays, either float in [0, 1] or uint8 (0-255, turned into
float32 ``k/255`` first, the values :func:`~dladiff_app.core.imageio.load_image` gives for an 8-bit
file), so a saved file and the float array it came from compare on the same scale. The
arithmetic is done in float64.
numpy + Pillow only.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

# Wang, Bovik, Sheikh, Simoncelli (2004), "Image quality assessment: from error visibility to
# structural similarity": 11x11 circular-symmetric Gaussian window, sigma 1.5, K1 0.01, K2 0.03.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def as_unit_float(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{name} must be (H, W, 3), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        # k/255 in float32, exactly what load_image returns for an 8-bit file, so a decoded
        # file and its uint8 pixels compare as identical.
        return (arr.astype(np.float32) / np.float32(255.0)).astype(np.float64)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name} must be float in [0, 1] or uint8, got {arr.dtype}")
    return arr.astype(np.float64)


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fa, fb = as_unit_float(a, "a"), as_unit_float(b, "b")
    if fa.shape != fb.shape:
        raise ValueError(f"images differ in size: {fa.shape} vs {fb.shape}")
    return fa, fb


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over all pixels and channels (peak 1.0, i.e. 255 for
    uint8); ``inf`` when the images are identical."""
    fa, fb = _pair(a, b)
    mse = float(np.mean((fa - fb) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def linf_255(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute per-channel difference, in 1/255 steps (8.0 means 8 levels of 0-255).
    Exact for two uint8 arrays; float inputs carry float rounding (7.00000006 for 7 levels)."""
    ia, ib = np.asarray(a), np.asarray(b)
    if ia.dtype == np.uint8 and ib.dtype == np.uint8:
        _pair(ia, ib)  # same shape checks as the float path
        return float(np.max(np.abs(ia.astype(np.int16) - ib.astype(np.int16))))
    fa, fb = _pair(a, b)
    return float(np.max(np.abs(fa - fb)) * 255.0)


def _gaussian_taps() -> np.ndarray:
    r = np.arange(SSIM_WINDOW, dtype=np.float64) - (SSIM_WINDOW - 1) / 2
    taps = np.exp(-(r**2) / (2 * SSIM_SIGMA**2))
    return taps / taps.sum()


def _blur_valid(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter of (H, W, C) over H and W, keeping only the positions where the
    whole window lies inside the image (no padding, so borders never bias the score)."""
    k = taps.shape[0]
    h, w = x.shape[0] - k + 1, x.shape[1] - k + 1
    rows = np.zeros((h,) + x.shape[1:], dtype=np.float64)
    for i in range(k):
        rows += taps[i] * x[i:i + h]
    out = np.zeros((h, w) + x.shape[2:], dtype=np.float64)
    for i in range(k):
        out += taps[i] * rows[:, i:i + w]
    return out


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity (Wang et al. 2004), computed per RGB channel and averaged over
    the three channels (not on luminance), data range 1.0.

    Local statistics use an 11x11 Gaussian window (sigma 1.5) and population (weighted) moments;
    the mean is taken over window positions fully inside the image. This matches
    ``skimage.metrics.structural_similarity(a, b, channel_axis=2, data_range=1,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``. Both sides must be at
    least 11 pixels.
    """
    fa, fb = _pair(a, b)
    if min(fa.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels")
    taps = _gaussian_taps()
    mu_a, mu_b = _blur_valid(fa, taps), _blur_valid(fb, taps)
    var_a = _blur_valid(fa * fa, taps) - mu_a * mu_a
    var_b = _blur_valid(fb * fb, taps) - mu_b * mu_b
    cov = _blur_valid(fa * fb, taps) - mu_a * mu_b
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def simulate_sharing(pixels: np.ndarray, *, jpeg_quality: int = 75,
                     long_side: int = 1080) -> np.ndarray:
    """What a social network does to a posted photo: 8-bit, downscale with Lanczos (Pillow's
    resampling widens the filter when shrinking, so it is antialiased) until the long side is at
    most ``long_side`` (never upscaled), then JPEG at ``jpeg_quality`` with 4:2:0 chroma (what
    the networks serve), decoded again.

    Input ``(H, W, 3)`` float [0, 1] or uint8 RGB; returns ``(h', w', 3) float32`` in [0, 1].
    """
    if not 1 <= int(jpeg_quality) <= 100:
        raise ValueError(f"jpeg_quality must be 1-100, got {jpeg_quality}")
    if long_side < 1:
        raise ValueError(f"long_side must be >= 1, got {long_side}")
    arr = as_unit_float(pixels, "pixels")
    img = Image.fromarray(np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8), mode="RGB")
    w, h = img.size
    scale = long_side / max(w, h)
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(jpeg_quality), subsampling=2)
    buf.seek(0)
    with Image.open(buf) as shared:
        return np.asarray(shared.convert("RGB"), dtype=np.float32) / 255.0
