"""A GPU run that works the first time, proven on the CPU: the dtype each card class gets
(simulated CUDA capabilities), encoders built on the meta device and following the run's
device, no float64 in a step on an accelerator. Run alone with ``pytest -m gpu_readiness``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dladiff_app.core.presets import Layers, preset
from dladiff_app.engine import device as device_mod
from dladiff_app.engine.device import accumulate_dtype, resolve_device
from dladiff_app.engine.faces import registry
from dladiff_app.engine.faces.dlib_chip import extract_face_chip
from dladiff_app.engine.faces.dlib_resnet import DlibEncoder, DlibResNet
from dladiff_app.engine.faces.scrfd import providers_for
from dladiff_app.engine.faces.types import Face, encoder_device
from dladiff_app.engine.shield import driver as driver_mod
from dladiff_app.engine.shield import face_term as face_term_mod
from dladiff_app.engine.shield.driver import Box, Constant, Driver, Phase
from dladiff_app.engine.shield.layer1 import _device_parts
from dladiff_app.engine.shield.precision import pixel_scale_for
from dladiff_app.engine.shield.surrogate import Surrogate

pytestmark = pytest.mark.gpu_readiness


def _simulate_cuda(monkeypatch: pytest.MonkeyPatch, name: str, capability: tuple[int, int],
                   memory: int = 16 * 2**30) -> None:
    """A machine with one CUDA card of ``capability``, whose torch answers True to
    ``is_bf16_supported()`` as it does on every CUDA card (through emulation before Ampere)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: capability)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index=0: SimpleNamespace(name=name, total_memory=memory))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


@pytest.mark.parametrize(("name", "capability", "expected"), [
    ("Tesla T4", (7, 5), torch.float16),
    ("Tesla V100-SXM2-16GB", (7, 0), torch.float16),
    ("NVIDIA GeForce RTX 2080 Ti", (7, 5), torch.float16),
    ("NVIDIA A100-SXM4-40GB", (8, 0), torch.bfloat16),
    ("NVIDIA GeForce RTX 4090", (8, 9), torch.bfloat16),
    ("NVIDIA H100 80GB HBM3", (9, 0), torch.bfloat16),
])
def test_simulated_card_gets_native_precision(monkeypatch: pytest.MonkeyPatch, name: str,
                                              capability: tuple[int, int],
                                              expected: torch.dtype) -> None:
    _simulate_cuda(monkeypatch, name, capability)
    info = resolve_device("cuda")
    assert info.autocast_dtype == expected
    # Layer 1 called with a plain device string decides the same.
    assert _device_parts("cuda:0")[1] == expected


@pytest.mark.parametrize(("capability", "loss_scaled"), [((7, 5), True), ((8, 6), False)])
def test_fp16_cards_get_loss_scaling(monkeypatch: pytest.MonkeyPatch,
                                     capability: tuple[int, int], loss_scaled: bool) -> None:
    _simulate_cuda(monkeypatch, "card", capability)
    dtype = resolve_device("cuda").autocast_dtype
    # The surrogate as layer 1 builds it for that card (its weights are not needed here).
    sur = Surrogate(vae=None, unet=None, text_embeddings=torch.zeros(1, 1, 1), scheduler=None,
                    device=torch.device("cpu"), autocast_dtype=dtype)
    assert sur.fp16 is loss_scaled
    assert pixel_scale_for(sur).enabled is loss_scaled


def test_mps_and_cpu_run_fp32_without_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_mod, "_mps_available", lambda: True)
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 24 * 2**30, raising=False)
    mps = resolve_device("mps")
    assert mps.autocast_dtype is None
    assert accumulate_dtype(mps.torch_device) == torch.float32
    assert accumulate_dtype("cuda:0") == torch.float32
    cpu = resolve_device("cpu")
    assert cpu.autocast_dtype is None
    assert accumulate_dtype(cpu.torch_device) == torch.float64


def _all_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]


def test_zero_shot_encoders_built_on_the_meta_device(tiny_arcface_onnx: Path) -> None:
    """The ensemble's encoders, through the registry's loaders, end with every weight and
    buffer on the run's device: the meta device here (no memory, no data)."""
    (arcface,) = registry.available_encoders(names=[str(tiny_arcface_onnx)], device="meta",
                                             half=torch.bfloat16)
    dlib = registry.place(DlibEncoder(DlibResNet()), "meta", torch.bfloat16)
    for enc in (arcface, dlib):
        assert isinstance(enc, torch.nn.Module)
        tensors = _all_tensors(enc)
        assert tensors and all(t.device.type == "meta" for t in tensors)
        # Face recognizers keep fp32 weights whatever the half dtype of the run.
        assert {t.dtype for t in tensors if t.is_floating_point()} == {torch.float32}
        assert encoder_device(enc) == torch.device("meta")


def test_clip_encoder_takes_the_half_dtype(tmp_path: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                              num_attention_heads=4, image_size=32, patch_size=8,
                              projection_dim=16)
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "clip")
    enc = registry.encoder_from_path(tmp_path / "clip")
    assert isinstance(enc, torch.nn.Module)
    # fp32 when the run has no half dtype (MPS, CPU).
    registry.place(enc, "cpu", None)
    assert {t.dtype for t in _all_tensors(enc) if t.is_floating_point()} == {torch.float32}
    registry.place(enc, "meta", torch.float16)
    dtypes = {t.dtype for t in _all_tensors(enc) if t.is_floating_point()}
    assert dtypes == {torch.float16}
    assert all(t.device.type == "meta" for t in _all_tensors(enc))


def test_kit_places_given_encoders_on_the_run_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from dladiff_app.engine.device import DeviceInfo
    from dladiff_app.engine.kit import build_kit

    meta = DeviceInfo("cuda", "meta", "simulated card", 8 * 2**30, torch.float16, "test")
    monkeypatch.setattr(device_mod, "resolve_device", lambda requested="auto": meta)

    class _NoDetector:
        name = "none"

        def detect(self, image: np.ndarray) -> list[Face]:
            return []

    enc = DlibEncoder(DlibResNet())
    settings = preset("medium").with_overrides(layers=Layers.ZEROSHOT)
    kit = build_kit(settings, device="cuda", detector=_NoDetector(), encoders=[enc],
                    store=SimpleNamespace(path=lambda model_id: Path("absent")))
    assert kit.layer2 is not None
    assert all(t.device.type == "meta" for t in _all_tensors(enc))


def test_scores_are_computed_on_the_encoders_device() -> None:
    from dladiff_app.engine.faces.score import score_pair

    class _Recorder(torch.nn.Module):
        name, metric, threshold = "recorder", "cosine", 0.5

        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, device="meta"))
            self.seen: list[torch.device] = []

        def embed(self, image: torch.Tensor, face: Face, flip: bool = False) -> torch.Tensor:
            self.seen.append(image.device)
            return torch.ones(4)

    rec = _Recorder()
    face = Face(box=np.array([2.0, 2.0, 10.0, 10.0]), landmarks5=np.zeros((5, 2)))
    photo = np.zeros((12, 12, 3), np.float32)
    (score,) = score_pair(photo, face, photo, face, [rec])
    assert rec.seen == [torch.device("meta"), torch.device("meta")]
    assert score.value == pytest.approx(1.0)


def test_scrfd_providers_follow_the_device() -> None:
    with_cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("cuda:1", with_cuda) == (
        [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"], 1)
    assert providers_for("cuda", with_cuda)[1] == 0
    # onnxruntime without a CUDA provider, MPS and the CPU detect on the CPU.
    assert providers_for("cuda:0", ["CPUExecutionProvider"]) == (["CPUExecutionProvider"], -1)
    assert providers_for("mps", with_cuda) == (["CPUExecutionProvider"], -1)
    assert providers_for("cpu", with_cuda) == (["CPUExecutionProvider"], -1)


class _DtypeWatch(TorchDispatchMode):
    """Records the dtype of every tensor an op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.dtypes.add(t.dtype)
        return out


@contextmanager
def _as_on_an_accelerator(monkeypatch: pytest.MonkeyPatch) -> Iterator[_DtypeWatch]:
    """The step's code as an accelerator runs it (its precise scalars in float32)."""
    import dladiff_app.engine.faces.dlib_chip as chip_mod

    for mod in (driver_mod, face_term_mod, chip_mod):
        monkeypatch.setattr(mod, "accumulate_dtype", lambda device: torch.float32)
    with _DtypeWatch() as watch:
        yield watch


def test_no_float64_in_a_step_on_an_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Layer 2's per-step maths (dlib's chip, the soft budget's norm ratio, MI-FGSM momentum)
    makes no float64 tensor once the device is not the CPU (MPS has no float64)."""
    from dladiff_app.engine.shield.face_term import RegionPixels, perceptual_gradient
    from dladiff_app.engine.shield.layer2 import ShieldOptions

    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 96, 96, generator=gen)
    shape = np.array([[60.0, 40.0], [52.0, 40.0], [30.0, 40.0], [38.0, 40.0], [45.0, 62.0]])
    px = RegionPixels(image, torch.full((1, 1, 96, 96), 0.5), torch.ones(1, 1, 96, 96))

    class _Term:
        name = "t"

        def gradients(self, xs: Any, step: int) -> tuple[list[torch.Tensor | None], None]:
            x = xs[0].detach().requires_grad_(True)
            loss = extract_face_chip(x, shape, size=40).mean()
            (grad,) = torch.autograd.grad(loss, x)
            grad = perceptual_gradient(grad, x, px, 8 / 255, ShieldOptions(soft_budget=0.5),
                                       gain=torch.ones(()))
            return [grad], None

    box = Box(torch.zeros_like(image), torch.ones_like(image))
    with _as_on_an_accelerator(monkeypatch) as watch:
        Driver([image], [box], [_Term()], Constant(1 / 255), momentum=1.0).run(
            [Phase(2, {"t": 1.0})])
    assert torch.float64 not in watch.dtypes
    assert torch.float32 in watch.dtypes


def test_memory_plan_for_card_sizes() -> None:
    """4 photos, 2 views each, 512 px, half precision; free memory after the base is loaded."""
    from dladiff_app.engine.shield.memory_plan import plan_layer1

    gib = 2**30
    small = plan_layer1(int(5.6 * gib), photos=4, views_per_photo=2, size=512, element_bytes=2)
    assert (small.micro_batch, small.checkpointing, small.fits) == (1, True, True)
    mid = plan_layer1(14 * gib, photos=4, views_per_photo=2, size=512, element_bytes=2)
    assert (mid.micro_batch, mid.checkpointing) == (2, False)
    big = plan_layer1(77 * gib, photos=4, views_per_photo=2, size=512, element_bytes=2)
    assert (big.micro_batch, big.checkpointing) == (4, False)
    tiny = plan_layer1(1 * gib, photos=4, views_per_photo=2, size=512, element_bytes=2)
    assert (tiny.micro_batch, tiny.checkpointing, tiny.fits) == (1, True, False)
    # The CPU: no free-memory figure, one photo per pass as before.
    cpu = plan_layer1(None, photos=4, views_per_photo=2, size=512, element_bytes=4)
    assert (cpu.micro_batch, cpu.checkpointing, cpu.budget_bytes) == (1, False, None)
    assert all(p.split_backward for p in (small, mid, big, tiny, cpu))


def test_activation_bytes_scale_with_pixels_and_precision() -> None:
    from dladiff_app.engine.shield.memory_plan import activation_bytes

    assert activation_bytes(2, 512, 2, checkpointing=True) == 2_720_000_000
    assert activation_bytes(1, 512, 2, checkpointing=False) == 2_940_000_000
    assert activation_bytes(1, 512, 2, checkpointing=False, split=False) == 3_720_000_000
    # 256 px is a quarter of the pixels; fp32 twice the bytes.
    assert activation_bytes(1, 256, 4, checkpointing=False) == 1_470_000_000


@pytest.mark.parametrize("fp16", [False, True])
def test_split_gradient_equals_one_backward(fp16: bool) -> None:
    """Each term differentiated on its own gives the gradient of the sum."""
    from dladiff_app.engine.shield.memory_plan import split_gradient
    from dladiff_app.engine.shield.precision import PixelLossScale

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    xs = [torch.rand(3, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
          for _ in range(2)]

    def head_of(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.tanh(torch.cat(parts) @ w.T)

    terms = [lambda h: 0.5 * (h ** 2).sum(), lambda h: -2.0 * torch.sin(h).mean()]
    joint = terms[0](head_of(xs)) + terms[1](head_of(xs))
    expected = torch.autograd.grad(joint, xs)
    scale = PixelLossScale("cpu", enabled=fp16, init=4.0)
    grads, total = split_gradient(head_of(xs), terms, xs, scale, factor=1.0)
    for g, e in zip(grads, expected, strict=True):
        # A loss scale multiplies the gradient (signs, all PGD uses, unchanged).
        assert torch.allclose(g, e * (4.0 if fp16 else 1.0), atol=1e-12)
    assert torch.isclose(total, joint.detach())


def test_noise_is_drawn_on_the_cpu_and_handed_to_the_device() -> None:
    """The draws come from the seeded CPU generator (the same numbers on every device) and
    arrive on the surrogate's device already (no copy inside the UNet call)."""
    from dladiff_app.engine.shield.surrogate import NoiseDraw

    def sur_on(device: str) -> Surrogate:
        cfg = SimpleNamespace
        return Surrogate(vae=cfg(config=cfg(block_out_channels=(32, 64))),
                         unet=cfg(config=cfg(in_channels=4)), text_embeddings=torch.zeros(1),
                         scheduler=cfg(config=cfg(num_train_timesteps=1000)),
                         device=torch.device(device), autocast_dtype=None)

    on_meta = NoiseDraw.draw(sur_on("meta"), 3, 64, torch.Generator().manual_seed(5),
                             prompts=torch.tensor([0, 1, 0]))
    assert on_meta.noise.shape == (3, 4, 32, 32)
    assert all(t is not None and t.device.type == "meta" for t in
               (on_meta.latent_eps, on_meta.noise, on_meta.timesteps, on_meta.prompts))
    on_cpu = NoiseDraw.draw(sur_on("cpu"), 3, 64, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    eps = torch.randn(3, 4, 32, 32, generator=gen)
    assert torch.equal(on_cpu.latent_eps, eps)
