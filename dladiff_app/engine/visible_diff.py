"""Will a person see the change at 100%? A compact, differentiable visible-difference model.

Mean colour difference and SSIM average a change over the face, so a few thin crease lines or a
soft blotch on smooth skin, which the eye finds at once when it flips between two versions, barely
move them. This model predicts visibility the way psychophysical metrics (Daly's VDP, HDR-VDP,
ColorVideoVDP) do, from the components they share, each a published result; the assembly and its
constants are ours:

- **Display** (``Viewing``): sRGB code values -> linear light -> luminance in cd/m^2 of a normal
  desktop display (200 cd/m^2 peak, 0.5 cd/m^2 black) seen at ``ppd`` pixels per visual degree
  (40: a 24" 1080p or 27" 1440p screen at arm's length; a photo shown at 100%).
- **Channels**: luminance, and two colour-opponent cone signals (L-M red-green, S-(L+M)/2
  yellow-violet) from linear RGB through the Hunt-Pointer-Estevez cone matrix, each taken as a
  contrast against the local adaptation luminance.
- **Bands**: a Laplacian pyramid (binomial 5-tap filter); band ``k``'s centre frequency is
  ``0.375 / 2^k`` cycles per pixel, times ``ppd`` in cycles per degree. Luminance bands are
  turned into local band-limited contrast (Peli 1990): the band over the local mean luminance of
  the next coarser level.
- **Contrast sensitivity**: Barten's (1999) achromatic CSF at each pixel's adaptation luminance;
  for colour, low-pass sensitivities in cone-contrast units shaped after Mullen's (1985)
  red-green and blue-yellow gratings (high at low frequencies, falling about 6x by 4 cycles per
  degree, and faster for S-cones): a colour tint on grey skin is seen, fine colour noise is not.
  ``Viewing.sensitivity`` scales all of them: grating thresholds are measured on long, steady
  patterns seen with full attention, while a change in a photo is short-lived in space.
- **Contrast masking**: the clean photo's own contrast in the same band and place raises the
  threshold (slope 0.7 at high masker contrast, Foley 1994 / Legge & Foley 1980): texture in hair,
  beard and eyebrows hides a change that smooth skin shows.
- **Pooling**: per band, a local Minkowski sum (exponent 4, a Gaussian of ``POOL_SIGMA`` band
  pixels), then across bands and channels (exponent 4): a per-pixel map in units of "just
  noticeable differences" (JND; 1 = seen about half the time by an attentive viewer flipping
  between the two versions).

A face's figure (:meth:`VisibleDifference.score`) is the maximum of that map over the face box
widened 1.5x (``core.visibility.FACE_WIDEN``): the spot a viewer finds, not an average.

Tensor contract: crops are (1, 3, h, w) float32 sRGB in [0, 1], h and w >= 8; maps are
(1, 1, h, w) float32 JND; everything is differentiable with respect to the test crop and stays
on its device (no float64, no host reads).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Minkowski exponents (probability summation) over space and over bands/channels.
BETA = 4.0
# Local pooling of every band's JND map: a Gaussian of this many visual degrees (a patch the
# eye integrates over when it compares two versions; at least one band pixel).
POOL_DEGREES = 0.15
# Pixels of photo around a face box that its figure is computed with (the pyramid's margin).
FACE_CONTEXT = 16
# Pyramid levels (finest first); coarser levels add little for a face seen at 100%.
MAX_LEVELS = 6
# Centre frequency of Laplacian band 0 in cycles per pixel.
BAND0_CPP = 0.375
# sRGB primaries (D65) -> XYZ, Hunt-Pointer-Estevez XYZ -> LMS.
_RGB_TO_XYZ = ((0.4124, 0.3576, 0.1805), (0.2126, 0.7152, 0.0722), (0.0193, 0.1192, 0.9505))
_XYZ_TO_LMS = ((0.38971, 0.68898, -0.07868), (-0.22981, 1.18340, 0.04641), (0.0, 0.0, 1.0))


@dataclass(frozen=True)
class Viewing:
    """How the photo is looked at: ``ppd`` pixels per visual degree, the display's ``peak`` and
    ``black`` luminance (cd/m^2), and a ``sensitivity`` factor on every CSF (see module doc)."""

    ppd: float = 40.0
    peak: float = 200.0
    black: float = 0.5
    sensitivity: float = 0.4


NORMAL_DISPLAY = Viewing()


def barten_csf(u: torch.Tensor | float, lum: torch.Tensor) -> torch.Tensor:
    """Barten's (1999) simplified achromatic contrast sensitivity at ``u`` cycles per degree and
    adaptation luminance ``lum`` (cd/m^2), for a 10-degree field: 1 / threshold Michelson
    contrast of a sine grating (peak about 500 near 4 cpd at 100 cd/m^2)."""
    u = torch.as_tensor(u, dtype=lum.dtype, device=lum.device)
    lum = lum.clamp_min(0.1)
    a = 540.0 * (1.0 + 0.7 / lum) ** -0.2 / (1.0 + 12.0 / (10.0 * (1.0 + u / 3.0) ** 2))
    b = 0.3 * (1.0 + 100.0 / lum) ** 0.15
    return a * u * torch.exp(-b * u) * torch.sqrt(1.0 + 0.06 * torch.exp(b * u))


def chroma_csf(u: float, peak: float, decay: float) -> float:
    """Low-pass colour sensitivity (after Mullen 1985): ``peak * exp(-decay * u)``."""
    return peak * math.exp(-decay * u)


# (peak sensitivity, decay per cpd) of the red-green and yellow-violet cone contrasts. Mullen's
# red-green gratings are detected at 0.5-1% of the gratings' own contrast near 0.5 cpd, and
# the L and M cones see about a tenth of it (their spectra overlap): in cone-contrast units
# the sensitivity is over 1000 at low frequencies, and falls about 6x by 4 cpd; the S-cone
# (yellow-violet) channel is weaker and falls faster.
RG_CSF = (1500.0, 0.45)
YV_CSF = (500.0, 0.6)


def _blur5(x: torch.Tensor) -> torch.Tensor:
    """Separable binomial [1 4 6 4 1]/16 blur of (N, C, h, w), edge-padded."""
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=x.device, dtype=x.dtype) / 16.0
    c = x.shape[1]
    x = F.pad(x, (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    return F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def _gauss(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t * t) / (2 * sigma * sigma))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _up(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _pyramid(x: torch.Tensor, levels: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Laplacian bands (finest first) of (N, C, h, w) and the Gaussian level below each band
    (its local mean, upsampled to the band's size)."""
    bands, means = [], []
    cur = x
    for _ in range(levels):
        low = _blur5(cur)
        down = low[..., ::2, ::2]
        up = _up(down, cur.shape[-2:])
        bands.append(cur - up)
        means.append(up)
        cur = down
    return bands, means


def _levels(h: int, w: int) -> int:
    n = 1
    while n < MAX_LEVELS and min(h, w) >> n >= 8:
        n += 1
    return n


def _channels(rgb: torch.Tensor, view: Viewing) -> tuple[torch.Tensor, torch.Tensor]:
    """Luminance (N, 1, h, w) in cd/m^2, and the two cone-opponent signals (N, 2, h, w),
    L-M and S-(L+M)/2, in the same units (they become contrasts against the local adaptation
    luminance band by band, as luminance does: a per-pixel ratio would explode in the dark)."""
    x = rgb.clamp(0.0, 1.0)
    lin = torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).clamp_min(1e-6) ** 2.4)
    xyz = torch.tensor(_RGB_TO_XYZ, device=x.device, dtype=x.dtype)
    lms_m = torch.tensor(_XYZ_TO_LMS, device=x.device, dtype=x.dtype) @ xyz
    span = view.peak - view.black
    lms = torch.einsum("ij,njhw->nihw", lms_m, lin) * span
    lum = view.black + span * torch.einsum("j,njhw->nhw", xyz[1], lin).unsqueeze(1)
    ll, mm, ss = lms[:, 0:1], lms[:, 1:2], lms[:, 2:3]
    opp = torch.cat([ll - mm, ss - 0.5 * (ll + mm)], dim=1)
    return lum, opp


# Masker contrast (in multiples of its own threshold) at which masking sets in.
MASK_ONSET = 3.0


def _masking(sens_contrast: torch.Tensor) -> torch.Tensor:
    """Threshold elevation from the masker's (pooled) contrast in sensitivity units: 1 up to
    about ``MASK_ONSET`` thresholds, then growing as ``(S*C / MASK_ONSET)^0.7``."""
    return (1.0 + (sens_contrast / MASK_ONSET) ** 2) ** 0.35


class VisibleDifference:
    """The visible-difference model against one clean crop (1, 3, h, w), with everything that
    depends only on the clean side computed once (pyramids, sensitivities, masking)."""

    def __init__(self, clean: torch.Tensor, view: Viewing = NORMAL_DISPLAY) -> None:
        if clean.dim() != 4 or clean.shape[:2] != (1, 3) or min(clean.shape[-2:]) < 8:
            raise ValueError(f"clean must be (1, 3, h, w) with h, w >= 8, got "
                             f"{tuple(clean.shape)}")
        self.view = view
        self.size = tuple(clean.shape[-2:])
        self.levels = _levels(*self.size)
        lum, opp = _channels(clean.detach(), view)
        bands, means = _pyramid(lum, self.levels)
        obands, _ = _pyramid(opp, self.levels)
        self.adapt, self.sens, self.osens, self.elev, self.oelev = [], [], [], [], []
        self.clean_lum_bands, self.clean_opp_bands = bands, obands
        for k in range(self.levels):
            u = view.ppd * BAND0_CPP / 2 ** k
            adapt = means[k].clamp_min(view.black)
            s = barten_csf(u, adapt) * view.sensitivity
            contrast = bands[k] / adapt
            so = torch.tensor([chroma_csf(u, *RG_CSF), chroma_csf(u, *YV_CSF)],
                              device=clean.device, dtype=clean.dtype).view(1, 2, 1, 1)
            so = so * view.sensitivity
            self.adapt.append(adapt)
            self.sens.append(s)
            self.osens.append(so)
            self.elev.append(_masking(_gauss((s * contrast).abs(), 2.0)))
            self.oelev.append(_masking(_gauss((so * obands[k] / adapt).abs(), 2.0)))

    def jnd_map(self, test: torch.Tensor) -> torch.Tensor:
        """(1, 1, h, w) visibility of ``test`` against the clean crop, in JND units."""
        if tuple(test.shape[-2:]) != self.size:
            raise ValueError(f"test crop {tuple(test.shape)} does not match {self.size}")
        lum, opp = _channels(test, self.view)
        bands, _ = _pyramid(lum, self.levels)
        obands, _ = _pyramid(opp, self.levels)
        total = None
        for k in range(self.levels):
            d_lum = self.sens[k] * (bands[k] - self.clean_lum_bands[k]).abs() / self.adapt[k]
            d_lum = d_lum / self.elev[k]
            d_opp = self.osens[k] * (obands[k] - self.clean_opp_bands[k]).abs() / self.adapt[k]
            d_opp = d_opp / self.oelev[k]
            d = torch.cat([d_lum, d_opp], dim=1)
            sigma = max(1.0, POOL_DEGREES * self.view.ppd / 2 ** k)
            pooled = _gauss(d.clamp_min(1e-6) ** BETA, sigma).sum(dim=1, keepdim=True)
            pooled = _up(pooled, self.size) if pooled.shape[-2:] != self.size else pooled
            total = pooled if total is None else total + pooled
        assert total is not None
        return total.clamp_min(1e-12) ** (1.0 / BETA)

    def score(self, test: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The face's figure (0-d): the maximum of :meth:`jnd_map`, over ``mask`` > 0 when
        given ((1, 1, h, w)); differentiable. The map is already pooled over a patch, so one
        noisy pixel does not decide it, while a thin crease covering 1% of a face does."""
        m = self.jnd_map(test).flatten()
        if mask is not None:
            m = m[mask.flatten() > 0]
        return m.amax()


def face_jnd(clean: torch.Tensor, test: torch.Tensor, boxes: Sequence[Sequence[float]],
             view: Viewing = NORMAL_DISPLAY, widen: float = 1.5) -> float | None:
    """The visibility of ``test`` against ``clean`` ((1, 3, H, W) [0, 1]) on the faces in
    ``boxes`` (x0, y0, x1, y1): the largest face figure (:meth:`VisibleDifference.score` of
    each face box widened ``widen`` times, with a margin for the pyramid); None without a
    measurable face."""
    from dladiff_app.core.visibility import widened_box

    h, w = clean.shape[-2:]
    worst = None
    with torch.no_grad():
        for box in boxes:
            x0, y0, x1, y1 = widened_box(box, w, h, widen)
            if x1 - x0 < 8 or y1 - y0 < 8:
                continue
            # Context around the box so its edges see the same bands as the inside.
            pad = FACE_CONTEXT
            cx0, cy0 = max(0, x0 - pad), max(0, y0 - pad)
            cx1, cy1 = min(w, x1 + pad), min(h, y1 + pad)
            model = VisibleDifference(clean[..., cy0:cy1, cx0:cx1], view)
            mask = clean.new_zeros((1, 1, cy1 - cy0, cx1 - cx0))
            mask[..., y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0] = 1.0
            s = float(model.score(test[..., cy0:cy1, cx0:cx1], mask))
            worst = s if worst is None else max(worst, s)
    return worst
