"""Loss scaling for fp16 devices (GPUs without bf16: T4, V100, RTX 20xx).

Under fp16 autocast the gradients that flow back through the VAE to the pixels, and through
the UNet to the fp32 LoRA weights, are small enough to underflow to zero in half precision: the
pixels stop moving and the LoRA stops learning. Both are scaled up before the backward pass.

* Pixels: PGD only uses ``sign(grad)``, which a positive scale does not change, so the scaled
  gradient is used as is; a step whose gradient overflowed (inf/nan) moves nothing and halves
  the scale, and the scale doubles again after a run of good steps. All of it stays on the
  device (``torch.where``), so there is no host synchronisation in the loop.
* LoRA: ``torch.amp.GradScaler`` (unscales before AdamW, skips overflowing steps).

bf16 and fp32 have fp32's exponent range: no scaling there (``enabled`` is False).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dladiff_app.engine.shield import surrogate as sg


class PixelLossScale:
    """Dynamic loss scale for gradients of a loss with respect to input pixels.

    ``grad(loss, inputs)`` returns the gradients of ``scale * loss`` (same signs as the true
    gradients), or zeros for every input when any of them is not finite."""

    def __init__(self, device: torch.device | str, enabled: bool, *, init: float = 2.0 ** 16,
                 growth_interval: int = 100) -> None:
        self.enabled = enabled
        self.growth_interval = growth_interval
        self.scale = torch.full((), float(init), device=device)
        self._good = torch.zeros((), dtype=torch.int64, device=device)

    def grad(self, loss: torch.Tensor, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.screen(list(torch.autograd.grad(self.scaled(loss), list(inputs))))

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` times the scale (unchanged when scaling is off)."""
        return loss * self.scale if self.enabled else loss

    def screen(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """Gradients of a :meth:`scaled` loss as PGD may use them: all zeros when any is not
        finite (and the scale halves), else unchanged (and the scale grows after a run of
        good steps). Unchanged when scaling is off."""
        if not self.enabled:
            return grads
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all()
        self._good = torch.where(finite, self._good + 1, torch.zeros_like(self._good))
        grow = self._good >= self.growth_interval
        self.scale = torch.where(finite, torch.where(grow, self.scale * 2.0, self.scale),
                                 self.scale * 0.5)
        self._good = torch.where(grow, torch.zeros_like(self._good), self._good)
        return [torch.where(finite, g, torch.zeros_like(g)) for g in grads]


def pixel_scale_for(sur: sg.Surrogate) -> PixelLossScale:
    """The pixel loss scale for ``sur``'s base precision (enabled only for fp16)."""
    return PixelLossScale(sur.device, enabled=sur.fp16)


def grad_scaler_for(sur: sg.Surrogate) -> torch.amp.GradScaler | None:
    """A GradScaler for LoRA steps on an fp16 base; None elsewhere."""
    if not sur.fp16:
        return None
    return torch.amp.GradScaler(sur.device.type)
