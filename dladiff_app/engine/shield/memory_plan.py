"""Layer 1's memory, planned before the run: photos per pass and gradient checkpointing chosen
from the device's free memory and the working size, and each surrogate term's backward taken on
its own (``split_gradient``) so only one UNet graph is alive at a time.

The cost model comes from ``benchmarks/layer1_memory.py`` (SD 1.5's architecture, random
weights, one PGD pass of the dual loss, bf16, flash attention, 512 px; results and the 8 GB plan
in ``benchmarks/results/layer1_memory.md``). Activations grow with the pixels of a view (flash
attention keeps no 4096 x 4096 probabilities) and with the element size: fp32 devices (MPS)
need twice the half-precision figures. The out-of-memory step-down (``shield.memory``) stays
as the safety net for what the model does not see (other programs, fragmentation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from dladiff_app.engine.shield.precision import PixelLossScale

# Bytes at 512 px in half precision, from the meta-device estimate (layer1_memory.md): what one
# more photo view in a pass adds with the terms' backward one by one, together, and with
# gradient checkpointing; and what a pass needs whatever its views (the pixel gradient, the
# largest op's workspace).
PER_VIEW_SPLIT = 2.40e9
PER_VIEW_TOGETHER = 3.18e9
PER_VIEW_CHECKPOINTED = 1.09e9
PASS_FIXED = 0.54e9
REFERENCE_SIZE = 512
# Plan to this share of the free memory: the caching allocator's rounding and fragmentation.
MARGIN = 0.8
# More photos per pass than this buys little speed on any card and costs memory.
MAX_PHOTOS_PER_PASS = 4


@dataclass(frozen=True)
class Layer1Plan:
    """Photos per pass, gradient checkpointing, the terms' backward one by one, the planned
    peak of the activations (bytes beyond the loaded weights) and the memory it planned for
    (None: unknown, e.g. the CPU). ``fits``: False when even the smallest plan exceeds it (the
    run then relies on the step-down)."""

    micro_batch: int
    checkpointing: bool
    split_backward: bool
    activation_bytes: int
    budget_bytes: int | None
    fits: bool = True

    def describe(self) -> str:
        gib = 2**30
        budget = ("" if self.budget_bytes is None
                  else f" of {self.budget_bytes / gib:.1f} GiB free")
        return (f"{self.micro_batch} photo(s) per pass, gradient checkpointing "
                f"{'on' if self.checkpointing else 'off'}, planned activations "
                f"{self.activation_bytes / gib:.1f} GiB{budget}"
                + ("" if self.fits else " (does not fit: steps down if it runs out)"))


def activation_bytes(views: int, size: int, element_bytes: int, *, checkpointing: bool,
                     split: bool = True) -> int:
    """Planned peak bytes of one layer-1 pass of ``views`` photo views at ``size`` px with
    ``element_bytes`` per activation (2: bf16/fp16, 4: fp32), beyond the loaded weights."""
    per_view = PER_VIEW_CHECKPOINTED if checkpointing else (
        PER_VIEW_SPLIT if split else PER_VIEW_TOGETHER)
    scale = (size / REFERENCE_SIZE) ** 2 * element_bytes / 2
    return int((PASS_FIXED + views * per_view) * scale)


def plan_layer1(free_bytes: int | None, *, photos: int, views_per_photo: int, size: int,
                element_bytes: int, micro_batch: int | None = None) -> Layer1Plan:
    """The plan for an album of ``photos`` with ``views_per_photo`` attacker views each.

    ``free_bytes``: the device memory free for activations now (the base already loaded);
    None (the CPU) keeps one photo per pass without checkpointing. ``micro_batch``: a fixed
    choice (kept; checkpointing is still planned for it). Otherwise: the most photos per pass
    (up to :data:`MAX_PHOTOS_PER_PASS`) that fit without checkpointing, else with it."""
    def need(mb: int, ckpt: bool) -> int:
        return activation_bytes(mb * views_per_photo, size, element_bytes, checkpointing=ckpt)

    if free_bytes is None:
        mb = micro_batch or 1
        return Layer1Plan(mb, False, True, need(mb, False), None)
    budget = int(free_bytes * MARGIN)
    sizes = [micro_batch] if micro_batch else list(
        range(min(photos, MAX_PHOTOS_PER_PASS), 0, -1))
    for ckpt in (False, True):
        for mb in sizes:
            if need(mb, ckpt) <= budget:
                return Layer1Plan(mb, ckpt, True, need(mb, ckpt), free_bytes)
    smallest = sizes[-1]
    return Layer1Plan(smallest, True, True, need(smallest, True), free_bytes, fits=False)


def free_bytes(device: torch.device) -> int | None:
    """Memory the run can still take on ``device``: CUDA's free memory plus what torch's
    cache holds unused; MPS's recommended working set minus what is allocated; None on the
    CPU (the operating system decides)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    if device.type == "mps":
        mps = torch.mps
        return int(mps.recommended_max_memory() - mps.driver_allocated_memory())
    return None


def split_gradient(head: torch.Tensor, terms: Sequence[Callable[[torch.Tensor], torch.Tensor]],
                   leaves: Sequence[torch.Tensor], scale: PixelLossScale, factor: float = 1.0
                   ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Gradients of ``factor * sum(term(head))`` with respect to ``leaves``, one term's graph
    at a time: each term runs on a detached copy of ``head`` and is differentiated to it at
    once (its graph freed), then the summed gradient flows through ``head``'s own graph (the
    VAE encoder) once. Same result as one backward of the sum, with one term's activations
    alive instead of all. ``scale``: the pixel loss scale (fp16), applied to every term.
    Returns the gradients and the detached sum of the terms (unscaled, without ``factor``)."""
    leaf = head.detach().requires_grad_(True)
    grad: torch.Tensor | None = None
    total: torch.Tensor | None = None
    for term in terms:
        loss = term(leaf)
        (g,) = torch.autograd.grad(scale.scaled(loss * factor), leaf)
        grad = g if grad is None else grad + g
        total = loss.detach() if total is None else total + loss.detach()
    if grad is None or total is None:
        raise ValueError("split_gradient needs at least one term")
    grads = torch.autograd.grad(head, list(leaves), grad_outputs=grad)
    return scale.screen(list(grads)), total
