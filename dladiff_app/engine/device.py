"""Which device the engine runs on, in which precision, and why.

``auto`` picks CUDA, then MPS, then CPU. ``DLADIFF_DEVICE`` overrides ``auto`` (an explicit
request from the settings or the command line wins over the variable). Precision rules: on CUDA
the frozen base models run under bf16 autocast where the GPU supports it, else fp16 autocast;
perturbations and LoRA weights always stay fp32 (their small updates vanish in half precision).
MPS and CPU run fp32.

"Supports bf16" means natively: compute capability 8.0 or newer (Ampere, Ada, Hopper...).
``torch.cuda.is_bf16_supported()`` also answers True on T4, V100 and RTX 20xx, which only
emulate bf16 (several times slower than their fp16 tensor cores), so it is not asked; those
cards take fp16 with loss scaling (``shield.precision``).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Literal

import torch

from dladiff_app.core.errors import DeviceError

DeviceKind = Literal["cuda", "mps", "cpu"]
ENV_DEVICE = "DLADIFF_DEVICE"



@dataclass(frozen=True)
class DeviceInfo:
    kind: DeviceKind
    torch_device: str                   # "cuda:0", "mps", "cpu"
    name: str
    memory_bytes: int | None
    autocast_dtype: torch.dtype | None  # bf16/fp16 on CUDA, None elsewhere
    reason: str

    def summary(self) -> str:
        memory = f", {self.memory_bytes / 2**30:.1f} GiB" if self.memory_bytes else ""
        precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(
            self.autocast_dtype or torch.float32, "fp32")
        return f"{self.name} ({self.kind}{memory}, {precision})"


def _cpu_info(reason: str) -> DeviceInfo:
    threads = torch.get_num_threads()
    memory: int | None = None
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    cpu = platform.processor() or platform.machine() or "CPU"
    return DeviceInfo("cpu", "cpu", f"CPU {cpu} ({threads} thread{'s' if threads != 1 else ''})", memory, None, reason)


def native_bf16(index: int = 0) -> bool:
    """Whether CUDA device ``index`` computes bf16 in hardware (compute capability >= 8.0)."""
    return tuple(torch.cuda.get_device_capability(index)) >= (8, 0)


def cuda_autocast_dtype(index: int = 0) -> torch.dtype:
    """bf16 on cards with native bf16, else fp16 (which then needs loss scaling)."""
    return torch.bfloat16 if native_bf16(index) else torch.float16


def autocast_dtype_for(device: torch.device | str) -> torch.dtype | None:
    """The frozen bases' half dtype on ``device`` (CUDA only), None for fp32 (MPS, CPU)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    return cuda_autocast_dtype(dev.index if dev.index is not None else 0)


def accumulate_dtype(device: torch.device | str) -> torch.dtype:
    """dtype for the few scalars and sample positions computed more precisely than fp32:
    float64 on the CPU (the CPU results stay bit-identical to the references they were checked
    against), float32 on an accelerator (MPS has no float64; consumer CUDA cards run it at
    1/32-1/64 of fp32's rate)."""
    return torch.float64 if torch.device(device).type == "cpu" else torch.float32


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host ``tensor`` on ``device``: through pinned memory without blocking for CUDA (the
    copy overlaps the host's next work; the stream orders it before any use), a plain copy for
    MPS, unchanged for the CPU."""
    dev = torch.device(device)
    if dev.type == "cpu" or tensor.device == dev:
        return tensor
    if dev.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(dev, non_blocking=True)
    return tensor.to(dev)


def _cuda_info(index: int, reason: str) -> DeviceInfo:
    props = torch.cuda.get_device_properties(index)
    return DeviceInfo("cuda", f"cuda:{index}", props.name, int(props.total_memory),
                      cuda_autocast_dtype(index), reason)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _mps_info(reason: str) -> DeviceInfo:
    memory: int | None = None
    recommended = getattr(getattr(torch, "mps", None), "recommended_max_memory", None)
    if callable(recommended):
        try:
            memory = int(recommended())
        except RuntimeError:
            memory = None
    return DeviceInfo("mps", "mps", "Apple GPU (Metal)", memory, None, reason)


def resolve_device(requested: str = "auto") -> DeviceInfo:
    """Resolve ``auto`` | ``cuda`` | ``cuda:N`` | ``mps`` | ``cpu`` to a usable device.

    An explicit request for an absent device raises :class:`DeviceError` with the reason.
    """
    choice = (requested or "auto").strip().lower()
    if choice == "auto":
        choice = os.environ.get(ENV_DEVICE, "auto").strip().lower() or "auto"
    if choice == "auto":
        return _auto()
    if choice == "cpu":
        return _cpu_info("CPU requested; the fine-tuning shield will be slow")
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                "CUDA was requested but is not available (no NVIDIA GPU, or this torch build is "
                "CPU-only): choose 'auto' or 'cpu' in the settings, or install a CUDA build of "
                "torch."
            )
        index = 0
        if ":" in choice:
            try:
                index = int(choice.split(":", 1)[1])
            except ValueError:
                raise DeviceError(f"Unknown device {requested!r}: use cuda:0, cuda:1, ...") from None
        if not 0 <= index < torch.cuda.device_count():
            raise DeviceError(
                f"{choice} was requested but only {torch.cuda.device_count()} CUDA device(s) "
                "exist."
            )
        return _cuda_info(index, f"{choice} requested")
    if choice == "mps":
        if not _mps_available():
            raise DeviceError("MPS (Apple GPU) was requested but is not available on this "
                              "machine: choose 'auto' or 'cpu'.")
        return _mps_info("MPS requested")
    raise DeviceError(f"Unknown device {requested!r}: use auto, cuda, cuda:N, mps or cpu.")


def _auto() -> DeviceInfo:
    if torch.cuda.is_available():
        return _cuda_info(0, "CUDA GPU found")
    if _mps_available():
        return _mps_info("Apple GPU (MPS) found")
    return _cpu_info("CUDA not available: using CPU; the fine-tuning shield will be slow")


def available_kinds() -> tuple[str, ...]:
    """The device kinds this machine can use, best first; ``"cpu"`` always."""
    kinds = []
    if torch.cuda.is_available():
        kinds.append("cuda")
    if _mps_available():
        kinds.append("mps")
    return (*kinds, "cpu")


def download_fp16_weights(requested: str = "auto") -> bool:
    """Whether model downloads for this machine take the half-size fp16 weight files: only
    when the device the settings pick is CUDA (its frozen bases run in half precision
    anyway). The command line and the app's model manager both ask this, so they download
    the same files; the loaders read either variant on any device."""
    try:
        return resolve_device(requested).kind == "cuda"
    except DeviceError:
        return False


def is_out_of_memory(exc: BaseException) -> bool:
    """True for device out-of-memory errors (CUDA, MPS or a failed CPU allocation)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return "out of memory" in text or "mps backend out of memory" in text
    return False


def empty_cache(device: DeviceInfo | str) -> None:
    """Release cached allocator memory after a model switch or an out-of-memory error."""
    kind = device.kind if isinstance(device, DeviceInfo) else str(device).split(":")[0]
    if kind == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif kind == "mps" and _mps_available():
        torch.mps.empty_cache()
