"""Expectation over transformations (EOT): the random "sharing" a protected photo goes through.

Every optimisation step of the zero-shot shield looks at the face region through one random
transformation like the ones a platform and an attacker apply: slight blur, downscale and back,
JPEG re-compression, and a small shift (which also stands for the 1-3 px by which a detector's
landmarks move on the perturbed photo). Averaged over steps, the perturbation learns to survive
them instead of living in the exact pixels of the saved file.

Tensor contract for every function here: ``x`` is (N, 3, H, W) float32 RGB in [0, 1] (any N, any
size), the result has the same shape, dtype and range, and is differentiable with respect to
``x``. Randomness comes only from the ``torch.Generator`` the caller passes (CPU, seeded), so a run
is reproducible.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dladiff_app.engine.faces.align import gaussian_blur as _blur

# JPEG quantisation tables of the standard (ITU-T T.81 Annex K), row-major, at quality 50.
_LUMA_Q50 = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)
_CHROMA_Q50 = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
)


@dataclass(frozen=True)
class EotConfig:
    """Ranges the random transformations are drawn from (METHOD.md, "Robustness").

    ``scale`` is the downscale factor range (then back up to the original size); ``blur_sigma``
    the Gaussian blur sigma range in pixels; ``max_shift`` the largest shift in whole pixels per
    axis; ``jpeg_quality`` the JPEG quality range. ``p_*`` are the probabilities that each
    transformation is applied at a step (a clean view now and then keeps the saved file itself
    strong).
    """

    jpeg_quality: tuple[int, int] = (60, 95)
    scale: tuple[float, float] = (0.5, 1.0)
    blur_sigma: tuple[float, float] = (0.0, 0.8)
    max_shift: int = 3
    p_jpeg: float = 0.75
    p_scale: float = 0.75
    p_blur: float = 0.3
    p_shift: float = 0.75

    def __post_init__(self) -> None:
        lo, hi = self.jpeg_quality
        if not 1 <= lo <= hi <= 100:
            raise ValueError(f"jpeg_quality must satisfy 1 <= lo <= hi <= 100, got {self.jpeg_quality}")
        slo, shi = self.scale
        if not 0 < slo <= shi <= 1:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if self.max_shift < 0 or self.blur_sigma[0] < 0 or self.blur_sigma[1] < self.blur_sigma[0]:
            raise ValueError("max_shift and blur_sigma must be non-negative ranges")


@dataclass(frozen=True)
class TransformParams:
    """One drawn transformation; ``None``/0 fields are skipped."""

    blur_sigma: float = 0.0
    scale: float = 1.0
    jpeg_quality: int | None = None
    shift: tuple[int, int] = (0, 0)  # (dx, dy) in pixels: content moves right/down when positive


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _coin(gen: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=gen)) < p


def sample_transform(config: EotConfig, gen: torch.Generator) -> TransformParams:
    """Draw one transformation. Always consumes the same number of random numbers, so the
    sequence of draws does not depend on which transformations happened to be switched on."""
    use_blur, sigma = _coin(gen, config.p_blur), _uniform(gen, *config.blur_sigma)
    use_scale, scale = _coin(gen, config.p_scale), _uniform(gen, *config.scale)
    use_jpeg, qf = _coin(gen, config.p_jpeg), _uniform(gen, *config.jpeg_quality)
    use_shift = _coin(gen, config.p_shift)
    k = config.max_shift
    dx = int(torch.randint(-k, k + 1, (), generator=gen))
    dy = int(torch.randint(-k, k + 1, (), generator=gen))
    return TransformParams(
        blur_sigma=sigma if use_blur else 0.0,
        scale=scale if use_scale else 1.0,
        jpeg_quality=int(round(qf)) if use_jpeg else None,
        shift=(dx, dy) if use_shift else (0, 0),
    )


def apply_transform(x: torch.Tensor, params: TransformParams) -> torch.Tensor:
    """Blur, downscale, JPEG at the reduced size (as a platform does), back up, then shift."""
    h, w = x.shape[-2:]
    y = x
    if params.blur_sigma > 0.05:
        y = gaussian_blur(y, params.blur_sigma)
    small = y
    if params.scale < 0.999:
        size = (max(8, round(h * params.scale)), max(8, round(w * params.scale)))
        small = F.interpolate(y, size=size, mode="bilinear", antialias=True, align_corners=False)
    if params.jpeg_quality is not None:
        small = jpeg_straight_through(small, params.jpeg_quality)
    if small.shape[-2:] != (h, w):
        y = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    else:
        y = small
    if params.shift != (0, 0):
        y = shift(y, *params.shift)
    return y.clamp(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, reflect padding (no dark rim at the crop border)."""
    return _blur(x, sigma, mode="reflect")


def shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Move the content by whole pixels, repeating the edge into the uncovered strip."""
    h, w = x.shape[-2:]
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))
    y = F.pad(x, pad, mode="replicate")
    top, left = max(-dy, 0), max(-dx, 0)
    return y[..., top : top + h, left : left + w]


# ----------------------------------------------------------------------------------------- JPEG


def jpeg_real(x: torch.Tensor, quality: int) -> torch.Tensor:
    """The real thing: encode each image with libjpeg (Pillow, 4:2:0 like most platforms) and
    decode it. Not differentiable; used as the forward value of :func:`jpeg_straight_through`."""
    out = []
    for img in x.detach().cpu():
        arr = np.rint(img.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality), subsampling=2)
        buf.seek(0)
        dec = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0
        out.append(torch.from_numpy(dec).permute(2, 0, 1))
    return torch.stack(out).to(device=x.device, dtype=x.dtype)


def jpeg_straight_through(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Forward: the exact libjpeg result. Backward: the gradient of :func:`jpeg_differentiable`,
    which knows which DCT frequencies the quantiser destroys at this quality (the plain
    straight-through identity would not)."""
    approx = jpeg_differentiable(x, quality)
    return approx + (jpeg_real(x, quality) - approx).detach()


@cache
def _dct_matrix(n: int = 8) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.float()


@cache
def _quant_tables(quality: int) -> tuple[torch.Tensor, torch.Tensor]:
    """IJG quality scaling of the Annex K tables (what libjpeg/Pillow use)."""
    q = min(100, max(1, quality))
    scale = 5000 / q if q < 50 else 200 - 2 * q

    def table(base: tuple[int, ...]) -> torch.Tensor:
        t = torch.tensor(base, dtype=torch.float32).view(8, 8)
        return torch.clamp(torch.floor((t * scale + 50) / 100), 1, 255)

    return table(_LUMA_Q50), table(_CHROMA_Q50)


def _soft_round(v: torch.Tensor) -> torch.Tensor:
    # Rounding with a useful gradient: exact value forward, derivative 3*(v - round(v))**2
    # (Shin & Song 2017), small where the quantiser snaps a coefficient.
    r = torch.round(v)
    return r + (v - r) ** 3


def _blockwise(c: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """DCT, quantise, dequantise, inverse DCT on 8x8 blocks of (N, C, H, W), H and W % 8 == 0."""
    n, ch, h, w = c.shape
    d = _dct_matrix().to(c)
    blocks = c.reshape(n, ch, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5)
    coef = d @ blocks @ d.T
    t = table.to(c)
    coef = _soft_round(coef / t) * t
    blocks = d.T @ coef @ d
    return blocks.permute(0, 1, 2, 4, 3, 5).reshape(n, ch, h, w)


def jpeg_differentiable(x: torch.Tensor, quality: int) -> torch.Tensor:
    """A differentiable model of baseline JPEG: JFIF YCbCr, 2x2 chroma averaging, 8x8 DCT with
    the IJG tables at ``quality``, smooth rounding, inverse. Close to libjpeg but not bit-exact
    (chroma upsampling, rounding of intermediate values); used for its gradient."""
    n, _, h, w = x.shape
    ph, pw = (-h) % 16, (-w) % 16
    v = F.pad(x, (0, pw, 0, ph), mode="replicate") * 255.0
    r, g, b = v[:, 0:1], v[:, 1:2], v[:, 2:3]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    luma_t, chroma_t = _quant_tables(int(quality))
    y = _blockwise(y - 128.0, luma_t) + 128.0
    chroma = F.avg_pool2d(torch.cat([cb, cr], dim=1), 2)
    chroma = _blockwise(chroma, chroma_t)
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
    cb, cr = chroma[:, 0:1], chroma[:, 1:2]
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    out = torch.cat([r, g, b], dim=1)[..., :h, :w] / 255.0
    return out.clamp(0.0, 1.0)
