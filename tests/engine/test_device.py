"""Device resolution on this machine (CPU) and the rules for the others, by simulation."""

from __future__ import annotations

import pytest
import torch

from dladiff_app.core.errors import DeviceError
from dladiff_app.engine import device as device_mod
from dladiff_app.engine.device import empty_cache, is_out_of_memory, resolve_device


def _cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_mod, "_mps_available", lambda: False)


def test_auto_falls_back_to_cpu_with_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu_only(monkeypatch)
    monkeypatch.delenv("DLADIFF_DEVICE", raising=False)
    info = resolve_device("auto")
    assert info.kind == "cpu" and info.torch_device == "cpu"
    assert info.reason == "CUDA not available: using CPU; the fine-tuning shield will be slow"
    assert info.autocast_dtype is None
    assert "thread" in info.name and (info.memory_bytes or 0) > 0  # "1 thread" or "N threads"
    torch.zeros(2, device=info.torch_device)  # the device string is usable


def test_cuda_request_without_cuda_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu_only(monkeypatch)
    with pytest.raises(DeviceError, match="CUDA was requested but is not available"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="MPS"):
        resolve_device("mps")
    with pytest.raises(DeviceError, match="Unknown device"):
        resolve_device("tpu")


def test_env_overrides_auto_only(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu_only(monkeypatch)
    monkeypatch.setenv("DLADIFF_DEVICE", "cuda")
    with pytest.raises(DeviceError):
        resolve_device("auto")
    assert resolve_device("cpu").kind == "cpu"  # explicit choice wins


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_dtype_rules() -> None:
    info = resolve_device("cuda")
    # Native bf16 from Ampere (8.0) on; the simulated card classes are in test_gpu_readiness.
    expected = torch.bfloat16 if torch.cuda.get_device_capability(0)[0] >= 8 else torch.float16
    assert info.autocast_dtype == expected
    assert info.memory_bytes and info.memory_bytes > 0


def test_out_of_memory_classification() -> None:
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))
    empty_cache("cpu")  # a no-op that must not fail
