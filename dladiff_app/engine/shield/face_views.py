"""What the zero-shot shield shows an identity encoder at each step: one "view" of each face.

A view is a crop of the protected photo around one face, resampled to a scale and then put
through the sharing transformations of :mod:`eot` (blur, JPEG, shift). Three kinds:

- *saved*: the 8-bit photo itself, at the face's working scale;
- *shared*: the photo as a platform serves it, downscaled to ``SHARE_LONG_SIDE`` and JPEG q75
  (the pixel grid and the 16 px JPEG blocks are aligned with those of the whole shared photo);
- *random*: a random EOT transformation at a random fraction of the working scale.

The working scale is 1 for ordinary faces and smaller for big ones (box side ``WORK_FACE_PX`` at
most): dlib, for one, looks at a big face through its own downscaling pyramid, and a view at the
size the encoder needs costs the same for a 600 px face as for a 150 px one. The resize is
differentiable (antialiased bilinear), so gradients reach every full-resolution pixel.

Tensor contract: crops are (1, 3, h, w) float32 RGB in [0, 1]; views the same at their own size.
Coordinates follow :mod:`faces.types` (pixel centres at integers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from dladiff_app.engine.faces.types import Face
from dladiff_app.engine.shield.eot import EotConfig, TransformParams, apply_transform
from dladiff_app.engine.shield.eot import sample_transform as _sample_eot
from dladiff_app.engine.shield.face_region import scale_face

SHARE_LONG_SIDE = 1080
SHARED_JPEG_QUALITY = 75
WORK_FACE_PX = 256
# JPEG's 4:2:0 blocks (MCUs) are 16 px: shared views start on that grid of the shared photo.
_MCU = 16


@dataclass(frozen=True)
class FaceCrop:
    """Where one face's views are taken from.

    ``box``: (x0, y0, x1, y1) slice bounds in its region's coordinates; ``origin``: the same
    box's top-left pixel in the full photo; ``face``: the face in the crop's coordinates;
    ``work_scale``: the largest scale views are computed at; ``share_scale``: the platform's
    downscale of the whole photo (1 when it is small enough).
    """

    box: tuple[int, int, int, int]
    origin: tuple[int, int]
    face: Face
    work_scale: float
    share_scale: float


@dataclass(frozen=True)
class ViewDraw:
    """One step's view: ``kind`` in saved/shared/random, ``fraction`` of the working scale
    (random views), and the EOT transformation applied after resampling."""

    kind: str
    fraction: float = 1.0
    transform: TransformParams = TransformParams()


def share_scale(width: int, height: int, long_side: int = SHARE_LONG_SIDE) -> float:
    """The factor a platform downscales a ``width`` x ``height`` photo by (never up)."""
    return min(1.0, long_side / max(width, height))


def work_scale(face: Face) -> float:
    """The largest scale worth computing a view of ``face`` at."""
    x0, y0, x1, y1 = (float(v) for v in face.box)
    return min(1.0, WORK_FACE_PX / max(1.0, x1 - x0, y1 - y0))


def draw_view(gen: torch.Generator, eot: EotConfig | None, p_shared: float,
              p_saved: float) -> ViewDraw:
    """Draw one step's view (always the same count of random numbers: reproducible)."""
    u = float(torch.rand((), generator=gen))
    params = _sample_eot(eot or EotConfig(), gen)
    if eot is None or u < p_saved:
        return ViewDraw("saved")
    if u < p_saved + p_shared:
        return ViewDraw("shared", transform=TransformParams(jpeg_quality=SHARED_JPEG_QUALITY))
    # The downscale is the view's own scale; the rest of the draw is applied at that size.
    return ViewDraw("random", fraction=params.scale, transform=replace(params, scale=1.0))


def view_scale(crop: FaceCrop, draw: ViewDraw) -> float:
    if draw.kind == "shared":
        return crop.share_scale
    return crop.work_scale * draw.fraction


def _axis_window(start: int, length: int, scale: float, align: int) -> tuple[int, int, int]:
    """(offset in the crop, input pixels, output pixels) of a resampled window whose output
    grid is the grid of the whole photo scaled by ``scale``, starting on a multiple of
    ``align`` output pixels."""
    j0 = math.ceil(start * scale / align) * align
    j1 = math.floor((start + length) * scale)
    n = max(1, j1 - j0)
    off = round(j0 / scale) - start
    m = round(n / scale)
    while off + m > length and n > 1:
        n -= 1
        m = round(n / scale)
    return max(0, off), min(m, length - max(0, off)), n


def make_view(x: torch.Tensor, crop: FaceCrop, draw: ViewDraw) -> tuple[torch.Tensor, Face]:
    """The view ``draw`` of crop ``x`` ((1, 3, h, w) float32 [0, 1], differentiable): returns
    the view tensor and the face in its coordinates."""
    scale = view_scale(crop, draw)
    face = crop.face
    view = x
    if scale < 0.999:
        h, w = x.shape[-2:]
        align = _MCU if draw.kind == "shared" else 1
        ox, mx, nx = _axis_window(crop.origin[0], w, scale, align)
        oy, my, ny = _axis_window(crop.origin[1], h, scale, align)
        # Whole factors of 2 or more first as a box average (cheap on a big face, forward and
        # backward), the rest antialiased bilinear; both keep the pixel-centre geometry.
        k = max(1, int(1.0 / scale))
        mx, my = mx - mx % k, my - my % k
        view = x[..., oy : oy + my, ox : ox + mx]
        if k > 1:
            view = F.avg_pool2d(view, k)
        view = F.interpolate(view, size=(ny, nx), mode="bilinear", antialias=True,
                             align_corners=False)
        face = scale_face(face, (float(ox), float(oy)), (nx / mx, ny / my))
    if draw.transform != TransformParams():
        view = apply_transform(view, draw.transform)
    return view, face

