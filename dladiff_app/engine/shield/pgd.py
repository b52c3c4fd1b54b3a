"""Projected gradient steps on images, shared by both shields.

Contract for every function here: images are float tensors with values in [0, 1] (any shape,
usually (3, H, W) or (N, 3, H, W), RGB); budgets ``eps`` and steps ``alpha`` are in the same
[0, 1] pixel units (callers convert from 1/255 steps with :func:`from_255`). The adversarial
image is kept, not the perturbation, so the [0, 1] box and the eps-ball are one projection.
"""

from __future__ import annotations

import torch


def from_255(value: float) -> float:
    """A budget or step in 1/255 units ("8") as a pixel-unit float (8/255)."""
    return float(value) / 255.0


def project(x_adv: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    """Nearest point to ``x_adv`` inside ``||x - clean||_inf <= eps`` and the [0, 1] box.

    The two constraints are both per-pixel intervals, so clamping to their intersection is the
    exact Euclidean projection.
    """
    low, high = ball_bounds(clean, eps)
    return torch.minimum(torch.maximum(x_adv, low), high)


def ball_bounds(clean: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) of ``||x - clean||_inf <= eps`` intersected with [0, 1], shaped like
    ``clean``."""
    return torch.clamp(clean - eps, min=0.0), torch.clamp(clean + eps, max=1.0)


def random_start(
    clean: torch.Tensor, eps: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``clean`` plus uniform noise in [-eps, eps], projected; same shape/dtype/device.

    PGD must not start at delta = 0: through a resize/crop the gradient can be exactly zero
    there, and the "protected" photo would equal the input (METHOD.md pitfall). The noise is
    drawn on the generator's device (CPU by default) so a seed gives the same start everywhere.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.rand(clean.shape, generator=generator, device=gen_device, dtype=torch.float32)
    noise = noise.to(device=clean.device, dtype=clean.dtype)
    return project(clean + (2.0 * noise - 1.0) * eps, clean, eps)


def grid_bounds(clean: torch.Tensor, eps: float | torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The eps-ball around ``clean`` intersected with [0, 1], shrunk to 8-bit grid values where
    ``clean`` is on the grid, so that rounding a point of it to the grid (the file as written)
    keeps it inside the budget. Returns (low, high), each shaped like ``clean``."""
    lo = torch.ceil(((clean - eps).clamp(0.0, 1.0) * 255.0) - 1e-4) / 255.0
    hi = torch.floor(((clean + eps).clamp(0.0, 1.0) * 255.0) + 1e-4) / 255.0
    return torch.minimum(lo, clean), torch.maximum(hi, clean)


def quantise_ste(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to the 8-bit grid the file is written on, with a straight-through gradient
    (backward acts as if the rounding were the identity)."""
    return x + (torch.round(x * 255.0) / 255.0 - x).detach()


def linf_255(x_adv: torch.Tensor, clean: torch.Tensor) -> float:
    """max |x_adv - clean| in 1/255 units (for reports and tests)."""
    return float((x_adv - clean).abs().max()) * 255.0
