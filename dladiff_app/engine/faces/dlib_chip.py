"""dlib's face-chip extraction as a differentiable torch warp.

Reproduces ``dlib.get_face_chip_details(shape, size, padding)`` followed by
``dlib.extract_image_chip`` (dlib/image_transforms/interpolation.h), which is what
``compute_face_descriptor(img, shape)`` feeds the face ResNet (150x150, padding 0.25):

1. a similarity transform (Umeyama least squares) from dlib's mean face template to the
   landmarks gives the chip's rectangle, rotation angle and size;
2. when the chip is much smaller than the face, dlib first builds a ``pyramid_down<2>`` image
   pyramid of a crop around the face: a separable [1 4 6 4 1] filter, every other pixel, integer
   division by 256 (8-bit intermediate images). It maps coordinates between levels with its own
   ``p/2 - (1.25, 0.75)`` rule, which is not the filter's true geometry; both are copied here
   because a quarter-pixel slip changes the chip;
3. bilinear sampling with pixel centres at integer coordinates; a sample whose 2x2 neighbourhood
   leaves the image is black; the result is truncated to 8 bits.

The 8-bit roundings are applied in the forward pass and skipped in the backward pass
(straight-through), so the chip equals dlib's while gradients reach the full-resolution photo.
Pixels outside the crop dlib reads get exactly zero gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dladiff_app.engine.device import accumulate_dtype

CHIP_SIZE = 150
CHIP_PADDING = 0.25

# dlib's mean face shape for landmarks 17..67 of the iBUG 68-point scheme, normalised to [0, 1]
# (the constants of get_face_chip_details).
_MEAN_X_17_67 = (
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
    0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
    0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
    0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
    0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
    0.553364, 0.490127, 0.42689,
)
_MEAN_Y_17_67 = (
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891,
    0.0187482, 0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326,
    0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733,
    0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099,
    0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
    0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746,
    0.784792, 0.824182, 0.831803, 0.824182,
)
# The template of dlib's 5-point model (eye corners, then the base of the nose).
_MEAN_5 = (
    (0.8595674595992, 0.2134981538014),
    (0.6460604764104, 0.2289674387677),
    (0.1205750620789, 0.2137274526848),
    (0.3340850613712, 0.2290642403242),
    (0.4901123135679, 0.6277975316475),
)


@dataclass(frozen=True)
class Rect:
    """dlib's ``drectangle``: inclusive corners, so ``width = right - left + 1``."""

    left: float
    top: float
    right: float
    bottom: float

    @property
    def width(self) -> float:
        return 0.0 if self.is_empty else self.right - self.left + 1

    @property
    def height(self) -> float:
        return 0.0 if self.is_empty else self.bottom - self.top + 1

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def is_empty(self) -> bool:
        return self.top > self.bottom or self.left > self.right

    @property
    def center(self) -> np.ndarray:
        return np.array([(self.left + self.right) / 2, (self.top + self.bottom) / 2])

    def down(self) -> Rect:
        """``pyramid_down<2>::rect_down``: dlib's coordinate rule for one pyramid level."""
        return Rect(self.left / 2 - 1.25, self.top / 2 - 0.75,
                    self.right / 2 - 1.25, self.bottom / 2 - 0.75)

    def translate(self, dx: float, dy: float) -> Rect:
        return Rect(self.left + dx, self.top + dy, self.right + dx, self.bottom + dy)

    def rotated_corners(self, angle: float) -> np.ndarray:
        """(4, 2) corners tl, tr, bl, br rotated by ``angle`` about the centre."""
        c, s = math.cos(angle), math.sin(angle)
        rot = np.array([[c, -s], [s, c]])
        pts = np.array([[self.left, self.top], [self.right, self.top],
                        [self.left, self.bottom], [self.right, self.bottom]])
        return (pts - self.center) @ rot.T + self.center


@dataclass(frozen=True)
class ChipDetails:
    """``dlib::chip_details``: where the chip lies in the image (before rotation) and its size."""

    rect: Rect
    angle: float
    rows: int
    cols: int


def _template(shape: np.ndarray, size: int, padding: float) -> tuple[np.ndarray, np.ndarray]:
    """(from, to) point pairs: template points in chip pixels, landmarks in image pixels."""
    if shape.shape == (5, 2):
        template = np.array(_MEAN_5)
        points = shape
    elif shape.shape == (68, 2):
        idx = [i for i in range(17, 68) if not (55 <= i <= 59 or 65 <= i <= 67 or i <= 26)]
        template = np.array([[_MEAN_X_17_67[i - 17], _MEAN_Y_17_67[i - 17]] for i in idx])
        points = shape[idx]
    else:
        raise ValueError(f"dlib landmarks must have shape (5, 2) or (68, 2), got {shape.shape}")
    return (padding + template) / (2 * padding + 1) * size, points


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama 1991, eqs. 34-43) mapping ``src`` onto ``dst`` (N, 2):
    returns (A (2, 2) = scale * rotation, t (2,)) with dst ~ A @ src + t."""
    mean_s, mean_d = src.mean(0), dst.mean(0)
    ds, dd = src - mean_s, dst - mean_d
    sigma_s = (ds**2).sum(1).mean()
    cov = dd.T @ ds / len(src)
    u, d, vt = np.linalg.svd(cov)
    s = np.eye(2)
    det = np.linalg.det(cov)
    if det < 0 or (det == 0 and np.linalg.det(u) * np.linalg.det(vt) < 0):
        s[1, 1] = -1  # numpy orders singular values descending: flip the smaller one
    r = u @ s @ vt
    scale = float(np.trace(np.diag(d) @ s) / sigma_s) if sigma_s != 0 else 1.0
    return scale * r, mean_d - scale * r @ mean_s


def face_chip_details(shape: np.ndarray, size: int = CHIP_SIZE,
                      padding: float = CHIP_PADDING) -> ChipDetails:
    """``dlib.get_face_chip_details``: ``shape`` (68, 2) or (5, 2) dlib landmarks (x, y) in
    full-resolution pixels (dlib's are integers)."""
    src, dst = _template(np.asarray(shape, dtype=np.float64), size, padding)
    a, t = similarity_transform(src, dst)
    p = a @ np.array([1.0, 0.0])
    angle = math.atan2(p[1], p[0])
    scale = math.hypot(p[0], p[1])
    centre = a @ np.array([size / 2.0, size / 2.0]) + t
    w = size * scale - 1  # dlib's centered_drect(p, w, h) spans w - 1 between corners
    rect = Rect(centre[0] - w / 2, centre[1] - w / 2, centre[0] + w / 2, centre[1] + w / 2)
    return ChipDetails(rect, angle, size, size)


def _round_rect(r: Rect) -> tuple[int, int, int, int]:
    """drectangle -> rectangle conversion: each coordinate rounded half up."""
    return tuple(int(math.floor(v + 0.5)) for v in (r.left, r.top, r.right, r.bottom))  # type: ignore[return-value]


def _ste(x: torch.Tensor, quantised: torch.Tensor) -> torch.Tensor:
    """Forward ``quantised``, backward identity (the 8-bit steps have no useful gradient)."""
    return x + (quantised - x).detach()


def _to_8bit(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> 0-255 rounded to integers (the 8-bit photo dlib reads), straight-through."""
    x255 = x.clamp(0, 1) * 255.0
    return _ste(x255, torch.round(x255))


def _binomial_stride2(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Weights [1 4 6 4 1] over 5 neighbours, every other output position, along ``dim``:
    output i covers input 2i..2i+4 (no padding), so n -> (n - 3) // 2 samples."""
    n = (x.shape[dim] - 3) // 2
    even = x.narrow(dim, 0, 2 * n + 3).unfold(dim, 1, 2).squeeze(-1).contiguous()  # n + 2
    odd = x.narrow(dim, 1, 2 * n + 1).unfold(dim, 1, 2).squeeze(-1).contiguous()  # n + 1
    return (even.narrow(dim, 0, n) + even.narrow(dim, 2, n)
            + 4 * (odd.narrow(dim, 0, n) + odd.narrow(dim, 1, n))
            + 6 * even.narrow(dim, 1, n))


def pyramid_down2(img: torch.Tensor) -> torch.Tensor:
    """``dlib::pyramid_down<2>`` on an 8-bit RGB image: ``img`` (1, 3, H, W) float with integer
    values 0-255 -> (1, 3, (H-3)//2, (W-3)//2), integer values. Output (r, c) is the [1 4 6 4 1]
    x [1 4 6 4 1] weighted sum around input (2r+2, 2c+2), integer-divided by 256 (sums stay
    below 2^16, exact in float32)."""
    if img.shape[2] <= 8 or img.shape[3] <= 8:
        raise ValueError(f"image too small for a pyramid level: {tuple(img.shape)}")
    summed = _binomial_stride2(_binomial_stride2(img, 3), 2)
    scaled = summed / 256.0
    return _ste(scaled, torch.floor(scaled))


def _bilinear_dlib(src: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """dlib's ``interpolate_bilinear`` + truncation to 8 bits: ``src`` (1, C, H, W) float32,
    ``x``/``y`` sample positions of any shape S (pixel centres at integers), float64 on the
    CPU and float32 on an accelerator (``device.accumulate_dtype``). Returns
    (1, C, *S) float32; a sample whose 2x2 neighbourhood leaves ``src`` is 0 (black)."""
    _, c, h, w = src.shape
    left = torch.floor(x)
    top = torch.floor(y)
    fx = (x - left).unsqueeze(0)
    fy = (y - top).unsqueeze(0)
    li, ti = left.long(), top.long()
    valid = (li >= 0) & (ti >= 0) & (li + 1 < w) & (ti + 1 < h)
    li = li.clamp(0, max(w - 2, 0))
    ti = ti.clamp(0, max(h - 2, 0))
    flat = src.reshape(c, h * w)

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        picked = flat[:, (yy * w + xx).reshape(-1)].reshape(c, *x.shape)
        # dlib interpolates in double before truncating (float32 on an accelerator).
        return picked.to(x.dtype)

    tl, tr = at(ti, li), at(ti, li + 1)
    bl, br = at(ti + 1, li), at(ti + 1, li + 1)
    value = (1 - fy) * ((1 - fx) * tl + fx * tr) + fy * ((1 - fx) * bl + fx * br)
    value = value * valid.unsqueeze(0)
    return _ste(value, torch.floor(value)).to(src.dtype).unsqueeze(0)


def extract_chip(image: torch.Tensor, details: ChipDetails) -> torch.Tensor:
    """``dlib::extract_image_chip(img, details, chip)`` for an 8-bit RGB photo.

    ``image``: (1, 3, H, W) float32 RGB in [0, 1] (rounded to 8 bits in the forward pass, as the
    photo dlib reads). Returns the chip (1, 3, rows, cols) float32 RGB with integer values 0-255,
    differentiable w.r.t. ``image``.
    """
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(f"image must be (1, 3, H, W), got {tuple(image.shape)}")
    _, _, h, w = image.shape
    size = details.rows * details.cols
    rect = details.rect

    if details.angle == 0 and details.rows == rect.height and details.cols == rect.width:
        # dlib copies the pixels without resampling; outside the photo is black.
        x0, y0, x1, y1 = _round_rect(rect)
        out = image.new_zeros(1, 3, y1 - y0 + 1, x1 - x0 + 1)
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)
        if ix0 <= ix1 and iy0 <= iy1:
            patch = _to_8bit(image[:, :, iy0 : iy1 + 1, ix0 : ix1 + 1])
            out[:, :, iy0 - y0 : iy1 - y0 + 1, ix0 - x0 : ix1 - x0 + 1] = patch
        return out

    # How deep the pyramid goes and how much of the photo it needs (dlib's own rules).
    depth, grow = 0, 2.0
    down = rect.down()
    while down.area > size:
        down = down.down()
        depth += 1
        grow = grow * 2 + 2
    corners = rect.rotated_corners(details.angle)
    grown = Rect(corners[:, 0].min() - grow, corners[:, 1].min() - grow,
                 corners[:, 0].max() + grow, corners[:, 1].max() + grow)
    clipped = Rect(max(grown.left, 0), max(grown.top, 0),
                   min(grown.right, w - 1), min(grown.bottom, h - 1))
    bl, bt, br, bb = _round_rect(clipped)
    if bl > br or bt > bb:
        raise ValueError("the face chip lies entirely outside the image")
    source = _to_8bit(image[:, :, bt : bb + 1, bl : br + 1])

    level = -1
    local = rect.translate(-bl, -bt)
    while local.down().area > size:
        level += 1
        local = local.down()
    for _ in range(level + 1):
        source = pyramid_down2(source)

    # Affine map chip (0,0), (cols-1,0), (0,rows-1) -> rotated tl, tr, bl of the level rect.
    tl, tr, bl_, _ = local.rotated_corners(details.angle)
    dev = image.device
    wide = accumulate_dtype(dev)
    cols = torch.arange(details.cols, dtype=wide, device=dev)
    rows = torch.arange(details.rows, dtype=wide, device=dev)
    yy, xx = torch.meshgrid(rows, cols, indexing="ij")
    ex = (tr - tl) / max(details.cols - 1, 1)
    ey = (bl_ - tl) / max(details.rows - 1, 1)
    sx = tl[0] + xx * ex[0] + yy * ey[0]
    sy = tl[1] + xx * ex[1] + yy * ey[1]
    return _bilinear_dlib(source, sx, sy)


def extract_face_chip(image: torch.Tensor, shape: np.ndarray, size: int = CHIP_SIZE,
                      padding: float = CHIP_PADDING) -> torch.Tensor:
    """dlib's face chip for ``shape`` (68 or 5 dlib landmarks, full-resolution pixels):
    ``image`` (1, 3, H, W) float32 RGB [0, 1] -> (1, 3, size, size) float32 RGB 0-255."""
    return extract_chip(image, face_chip_details(shape, size, padding))
