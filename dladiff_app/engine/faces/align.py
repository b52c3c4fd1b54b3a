"""Face alignment: similarity transforms and a differentiable affine warp.

The warp reproduces ``cv2.warpAffine(img, M, (w, h), flags=INTER_LINEAR, borderValue=0)``, the
crop insightface's ``face_align.norm_crop`` feeds its recognizers, so the attack optimises the
pixels the real encoder will see. Conventions (OpenCV's): integer pixel coordinates are pixel
centres; ``M`` maps *source* pixel coordinates to *output* pixel coordinates and every output
pixel ``(u, v)`` samples the source at ``M^-1 (u, v, 1)`` bilinearly, with zeros outside.

The warp first crops the source region the output can reach (plus a margin), so its cost follows
the face's size, not the photo's megapixels.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

# insightface's ArcFace template (``face_align.arcface_dst``): the 5 landmark positions in a
# 112x112 aligned crop, insightface order (left eye, right eye, nose, left/right mouth corner).
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama 1991) taking ``src`` points onto ``dst``.

    ``src``, ``dst``: (N, 2) float, N >= 2. Returns (2, 3) float64 ``[s*R | t]`` with
    ``dst ~ s * R @ src + t`` (rotation, uniform scale, translation, no reflection), the
    estimate skimage's ``SimilarityTransform.estimate`` returns for non-degenerate points.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"expected two (N, 2) point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    sc, dc = src - mu_s, dst - mu_d
    cov = dc.T @ sc / src.shape[0]
    u, sing, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[-1] = -1.0  # the best rotation, not a reflection
    rot = u @ np.diag(d) @ vt
    var_s = sc.var(axis=0).sum()
    if var_s <= 0:
        raise ValueError("source points coincide: no similarity transform")
    scale = float(sing @ d) / var_s
    out = np.zeros((2, 3))
    out[:, :2] = scale * rot
    out[:, 2] = mu_d - scale * rot @ mu_s
    return out


def norm_crop_matrix(landmarks5: np.ndarray, image_size: int = 112) -> np.ndarray:
    """(2, 3) transform from photo pixels to insightface's aligned crop of ``image_size``.

    Same template scaling as ``face_align.estimate_norm``: sizes that are multiples of 112
    scale the template; multiples of 128 scale it by size/128 and shift it right by 8*ratio.
    """
    if image_size % 112 == 0:
        ratio, shift = image_size / 112.0, 0.0
    elif image_size % 128 == 0:
        ratio = image_size / 128.0
        shift = 8.0 * ratio
    else:
        raise ValueError(f"crop size {image_size} is not a multiple of 112 or 128")
    dst = ARCFACE_TEMPLATE_112 * ratio
    dst[:, 0] += shift
    return estimate_similarity(np.asarray(landmarks5, dtype=np.float64), dst)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine ``matrix`` to (N, 2) points."""
    pts = np.asarray(points, dtype=np.float64)
    m = np.asarray(matrix, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def _shrink(matrix: np.ndarray) -> float:
    """The output/source scale of a (2, 3) similarity ``matrix``."""
    m = np.asarray(matrix, dtype=np.float64)
    return math.sqrt(abs(float(np.linalg.det(m[:, :2]))))


def antialias_sigma(matrix: np.ndarray) -> float:
    """Gaussian pre-blur (source pixels) for a warp that shrinks the image.

    With ``s`` the output/source scale of ``matrix``, sigma = max(0, (1/s - 1) / 2): the
    default of skimage's ``resize(anti_aliasing=True)``. 0 when the warp does not downscale.
    """
    scale = _shrink(matrix)
    return max(0.0, (1.0 / scale - 1.0) / 2.0) if scale > 0 else 0.0


_state = threading.local()


@contextmanager
def antialiased_warps(factor: float = 1.0) -> Iterator[None]:
    """Within the block, every :func:`warp_affine` on this thread pre-blurs with ``factor``
    times :func:`antialias_sigma` (0: not at all), unless asked for ``antialias=True``."""
    if factor < 0:
        raise ValueError(f"factor must be >= 0, got {factor}")
    before = warp_antialias_factor()
    _state.factor = float(factor)
    try:
        yield
    finally:
        _state.factor = before


def warp_antialias_factor() -> float:
    """The factor :func:`antialiased_warps` set on this thread (0 outside any block)."""
    return float(getattr(_state, "factor", 0.0))


def gaussian_blur(x: torch.Tensor, sigma: float, mode: str = "replicate") -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W), radius 3 sigma, differentiable. ``mode``: the
    border padding (``replicate`` for antialiasing a crop, ``reflect`` for EOT blur)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def warp_affine(
    image: torch.Tensor,
    matrix: np.ndarray,
    out_size: int | tuple[int, int],
    antialias: bool = False,
) -> torch.Tensor:
    """Differentiable ``cv2.warpAffine`` (bilinear, constant border 0).

    ``image``: (N, C, H, W) float (any range, any colour order; it is passed through), may
    require grad. ``matrix``: (2, 3) mapping source pixel coordinates to output pixel
    coordinates (OpenCV's forward matrix, e.g. from :func:`norm_crop_matrix`); it is a
    constant, not differentiated. ``out_size``: ``w`` or ``(w, h)``. Returns (N, C, h, w) in
    ``image``'s dtype; gradients reach exactly the source pixels the bilinear samples touch.

    ``antialias=True`` blurs the source region with :func:`antialias_sigma` before sampling,
    so a face much larger than the crop does not alias (when the warp shrinks k >= 2 times, a
    k x k box average and a Gaussian on the pooled crop with the same total variance). It no
    longer equals cv2/insightface (which alias): keep it off when the crop must match what a
    real encoder sees.
    """
    w, h = (out_size, out_size) if isinstance(out_size, int) else out_size
    if image.dim() != 4:
        raise ValueError(f"expected an (N, C, H, W) image, got shape {tuple(image.shape)}")
    n, c, height, width = image.shape
    fwd = np.vstack([np.asarray(matrix, dtype=np.float64).reshape(2, 3), [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(fwd)[:2]
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=np.float64)
    src = transform_points(corners, inv)
    factor = 1.0 if antialias else warp_antialias_factor()
    sigma = factor * antialias_sigma(matrix) if factor > 0 else 0.0
    # A box average over the whole factor of the shrink comes first (cheap forward and backward
    # on a big face); a Gaussian on the smaller crop makes up the rest of the variance.
    k = max(1, int(1.0 / _shrink(matrix))) if sigma > 0 else 1
    margin = 1 + (math.ceil(3 * sigma) + k if sigma > 0 else 0)
    x0 = max(0, math.floor(src[:, 0].min()) - margin)
    y0 = max(0, math.floor(src[:, 1].min()) - margin)
    x1 = min(width, math.floor(src[:, 0].max()) + 2 + margin)
    y1 = min(height, math.floor(src[:, 1].max()) + 2 + margin)
    if x0 >= x1 or y0 >= y1:
        # The crop lies entirely outside the photo: all border, still connected to the graph.
        return image[:, :, :1, :1].sum() * 0.0 + image.new_zeros(n, c, h, w)
    crop = image[:, :, y0:y1, x0:x1]
    k = min(k, y1 - y0, x1 - x0)  # a sliver at the photo's edge: no bigger box than it has
    if k > 1:
        crop = F.avg_pool2d(crop[..., : (y1 - y0) // k * k, : (x1 - x0) // k * k], k)
        # A k-pixel box has variance (k^2 - 1) / 12; the rest, in pooled pixels.
        sigma = math.sqrt(max(0.0, sigma**2 - (k * k - 1) / 12.0)) / k
    if sigma > 0:
        crop = gaussian_blur(crop, sigma)
    ch, cw = crop.shape[-2:]
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pts = transform_points(np.stack([u.ravel(), v.ravel()], axis=1), inv) - [x0, y0]
    # Pooled pixel j covers crop pixels kj .. kj + k - 1: its centre is at kj + (k - 1) / 2.
    pts = (pts - (k - 1) / 2.0) / k
    # align_corners=False: normalised -1/+1 are the outer edges, so pixel i's centre is at
    # (2i + 1)/size - 1, exactly OpenCV's integer-centre convention.
    gx = (2.0 * pts[:, 0] + 1.0) / cw - 1.0
    gy = (2.0 * pts[:, 1] + 1.0) / ch - 1.0
    grid = torch.from_numpy(np.stack([gx, gy], axis=1).reshape(1, h, w, 2))
    grid = grid.to(dtype=image.dtype, device=image.device).expand(n, h, w, 2)
    return F.grid_sample(crop, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
