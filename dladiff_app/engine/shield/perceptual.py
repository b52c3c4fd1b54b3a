"""Where the eye does not see a change: a texture-masking budget for the zero-shot shield.

A change of a few levels is invisible in hair, eyebrows, stubble and edges, and plain to see on
smooth skin and in flat backgrounds (contrast masking: a signal hides in local contrast of its
own frequency). :func:`texture_budget` turns the clean photo's local luminance contrast into a
per-pixel share of the L-inf budget: 1 where the texture is at least ``reference`` strong, down
to ``floor`` on flat areas. The shield then either bounds each pixel by ``eps * share`` (a hard
map) or penalises the change in units of that share (a soft map); ``benchmarks/visibility.py``
compares the two.

Tensor contract: (1, 3, h, w) float32 RGB in [0, 1] in, (1, 1, h, w) float32 in [floor, 1] out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dladiff_app.engine.faces.align import gaussian_blur

_LUMA = (0.299, 0.587, 0.114)
# Local contrast that fully masks a change of the whole budget: a luma standard deviation of
# 6 levels (of 255) inside ~3 px.
TEXTURE_REFERENCE = 6.0 / 255.0
TEXTURE_SIGMA = 1.5


def luma(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of (N, 3, h, w) RGB: (N, 1, h, w)."""
    w = x.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def texture_budget(clean: torch.Tensor, floor: float,
                   reference: float = TEXTURE_REFERENCE,
                   sigma: float = TEXTURE_SIGMA, scale: float = 1.0) -> torch.Tensor:
    """Per-pixel share of the budget, in [``floor``, 1], from the local luma contrast of
    ``clean`` (its Gaussian-weighted standard deviation over ``sigma`` pixels, relative to
    ``reference``). ``floor`` >= 1 gives the plain uniform budget.

    ``scale`` < 1 measures the contrast on ``clean`` downscaled by it (the face's working
    scale), then brings the map back to full size: a big face in a high-resolution photo is
    smooth pixel by pixel, yet the encoders see it downscaled, where its texture is that of an
    ordinary face; measured at full size, it would get the floor everywhere and the budget
    would average away in the encoders' views."""
    if floor >= 1.0:
        return clean.new_ones((1, 1, *clean.shape[-2:]))
    h, w = clean.shape[-2:]
    small = clean
    if scale < 0.999:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        small = F.interpolate(clean, size=size, mode="area")
    y = luma(small)
    mean = gaussian_blur(y, sigma)
    var = (gaussian_blur(y * y, sigma) - mean * mean).clamp_min(0.0)
    share = (var.sqrt() / reference).clamp(min=floor, max=1.0)
    if share.shape[-2:] != (h, w):
        share = F.interpolate(share, size=(h, w), mode="bilinear", align_corners=False)
    return share
