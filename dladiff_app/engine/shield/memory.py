"""Out-of-memory step-downs for layer 1 on CUDA and MPS (and a CPU that cannot allocate).

Work that runs out of device memory is retried one rung lower, and every rung is said: first
fewer photos per micro-batch (down to one), then gradient checkpointing of the UNet and the VAE
(recompute activations in the backward pass instead of keeping them), then a smaller working
size (3/4 each time, kept a multiple of the model's latent grid, never below half the model's
native size). Only when nothing is left does it raise :class:`DeviceError`, which the runner
turns into a fall-back to the zero-shot shield.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from dladiff_app.core.errors import DeviceError
from dladiff_app.engine.device import empty_cache, is_out_of_memory
from dladiff_app.engine.shield import surrogate as sg

T = TypeVar("T")


def size_multiple(sur: sg.Surrogate) -> int:
    """Working sizes must be multiples of this: the VAE's downscale times the UNet's."""
    return 2 ** (len(sur.vae.config.block_out_channels) - 1) \
        * 2 ** (len(sur.unet.config.block_out_channels) - 1)


class StepDown:
    """Micro-batches of an album of ``n`` photos and the rungs taken so far.

    ``size``: the working size now (read it on every retry: a rung may lower it).
    ``notes``: one sentence per rung taken; ``notify`` is called with each as it happens.
    ``split_backward``: each surrogate term differentiated on its own (``memory_plan``)."""

    def __init__(self, sur: sg.Surrogate, n: int, micro_batch: int, size: int,
                 device_name: str, notify: Callable[[str], None] | None = None, *,
                 split_backward: bool = True) -> None:
        self.sur, self.n, self.micro_batch, self.size = sur, n, max(1, micro_batch), size
        self.split_backward = split_backward
        self.device_name = device_name
        self.checkpointing = bool(getattr(sur.unet, "is_gradient_checkpointing", False))
        self.min_size = max(size_multiple(sur), sur.native_size // 2)
        self.notes: list[str] = []
        self._notify = notify

    def chunks(self) -> list[list[int]]:
        return [list(range(i, min(i + self.micro_batch, self.n)))
                for i in range(0, self.n, self.micro_batch)]

    def retry(self, work: Callable[[], T]) -> T:
        """``work()``, retried after each step-down while it runs out of memory."""
        while True:
            try:
                return work()
            except Exception as err:  # CUDA: OutOfMemoryError; MPS: RuntimeError text
                if not is_out_of_memory(err):
                    raise
            # Outside the except block: the failed step's frames and tensors are freed before
            # the allocator's cache is emptied.
            self._step_down()

    def _smaller_size(self) -> int | None:
        multiple = size_multiple(self.sur)
        smaller = (self.size * 3 // 4) // multiple * multiple
        return smaller if smaller >= self.min_size and smaller < self.size else None

    def _step_down(self) -> None:
        empty_cache(self.sur.device.type)
        if self.micro_batch > 1:
            self.micro_batch = max(1, self.micro_batch // 2)
            note = f"{self.micro_batch} photo(s) at a time"
        elif not self.checkpointing:
            self.sur.unet.enable_gradient_checkpointing()
            self.sur.vae.enable_gradient_checkpointing()
            self.checkpointing = True
            note = "gradient checkpointing on (slower, less memory)"
        elif (smaller := self._smaller_size()) is not None:
            note = f"working size {self.size} -> {smaller} px"
            self.size = smaller
        else:
            raise DeviceError(
                f"{self.device_name} ran out of memory in the fine-tuning shield even with one "
                f"photo at a time, gradient checkpointing and a working size of {self.size} px. "
                "Close other programs using the GPU, or run on the CPU.")
        note = f"{self.device_name} ran out of memory in the fine-tuning shield: {note}."
        self.notes.append(note)
        if self._notify is not None:
            self._notify(note)

