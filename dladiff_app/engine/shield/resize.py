"""Differentiable resize + center crop of a full-resolution photo to a surrogate's working size.

This is what a DreamBooth/LoRA training script does to a photo (resize the shorter side to the
resolution with antialiased bilinear filtering, then center-crop a square), written with
differentiable torch ops so a gradient on the working-size image reaches every full-resolution
pixel inside the crop. Matching the attacker's preprocessing is what makes the perturbation
survive the attacker's own downscale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def working_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(resized_h, resized_w, top, left) of the shorter-side resize to ``size`` and the center
    crop, with torchvision's rounding (``Resize(size)`` then ``CenterCrop(size)``)."""
    if height <= 0 or width <= 0 or size <= 0:
        raise ValueError(f"bad sizes: image {height}x{width}, working size {size}")
    if height <= width:
        new_h, new_w = size, int(size * width / height)
    else:
        new_h, new_w = int(size * height / width), size
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return new_h, new_w, top, left


def resize_shorter_side(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` (3, H, W) or (N, 3, H, W) float RGB [0, 1] with its shorter side resized to
    ``size`` (the first half of :func:`to_working`): (N, 3, new_h, new_w), differentiable.
    Downscaling uses antialiased bilinear filtering (area-like, as PIL/torchvision do);
    upscaling is plain bilinear."""
    batch = x.unsqueeze(0) if x.dim() == 3 else x
    if batch.dim() != 4:
        raise ValueError(f"expected (3, H, W) or (N, 3, H, W), got {tuple(x.shape)}")
    h, w = int(batch.shape[-2]), int(batch.shape[-1])
    new_h, new_w, _, _ = working_geometry(h, w, size)
    if (new_h, new_w) == (h, w):
        return batch
    shrinking = new_h < h or new_w < w
    return F.interpolate(batch, size=(new_h, new_w), mode="bilinear", align_corners=False,
                         antialias=shrinking)


def to_working(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side of ``x`` to ``size`` and center-crop to ``size`` x ``size``.

    ``x``: (3, H, W) or (N, 3, H, W) float RGB in [0, 1]. Returns (N, 3, size, size) (N = 1 for
    a single image), same dtype/device, differentiable (see :func:`resize_shorter_side`).
    """
    batch = resize_shorter_side(x, size)
    h, w = (int(x.shape[-2]), int(x.shape[-1]))
    _, _, top, left = working_geometry(h, w, size)
    return batch[..., top : top + size, left : left + size]
