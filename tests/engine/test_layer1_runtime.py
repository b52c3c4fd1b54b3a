"""Layer 1 as a user's machine runs it, on the tiny random SD and the real offline dlib stack:
every downloaded weight variant loads, out-of-memory errors step down and finish, a layer-1
failure falls back to the zero-shot shield with a notice, Stable Diffusion is loaded once per
job, and fp16 bases get loss scaling. GPU errors are simulated (no GPU on the test machines).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from dladiff_app.core.events import Event, Notice, PhotoDone, PhotoFailed
from dladiff_app.core.jobs import ProtectJob
from dladiff_app.core.presets import Layers, ProtectionSettings
from dladiff_app.engine.runner import run_job
from dladiff_app.engine.shield import surrogate as sg
from tests.fixtures.tiny_sd import TINY_SD_RESOLUTION

BOTH = ProtectionSettings(preset="custom", eps=8.0, layers=Layers.BOTH, layer1_rounds=2,
                          layer1_pgd_steps=2, layer1_denoise_steps=1, layer1_lora_steps=1,
                          prior_steps=2,
                          layer2_steps=4, polish_steps=1)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dlib_parts() -> tuple[Any, list[Any]]:
    from dladiff_app.engine.faces.dlib_detect import DlibDetector
    from dladiff_app.engine.faces.dlib_resnet import DlibEncoder

    return DlibDetector(), [DlibEncoder.load()]


def _face_album(folder: Path, names: tuple[str, ...] = ("a.png",)) -> Path:
    """Real face photos (crops of skimage's astronaut), small so the tiny model runs fast."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    astro = Image.fromarray(data.astronaut())
    for i, name in enumerate(names):
        astro.crop((100 + 8 * i, 0, 400 + 8 * i, 260)).resize((150, 130)).save(folder / name)
    return folder


def _kit(pipeline: Path, tmp_path: Path, dlib_parts: tuple[Any, list[Any]],
         settings: ProtectionSettings = BOTH) -> Any:
    from tests.engine.test_runner import _kit as runner_kit

    return runner_kit(pipeline, tmp_path, dlib_parts, settings)


def _manifest_photos(out: Path) -> list[dict[str, Any]]:
    manifest = json.loads(next(out.rglob("manifest.json")).read_text())
    return list(manifest["photos"])


def test_fp16_variant_only_folder_protects_with_both_layers(
        tiny_sd_dir: Path, tmp_path: Path, dlib_parts: tuple[Any, list[Any]]) -> None:
    """What `dladiff models download sd15` fetches for a CUDA machine (the fp16 files only)
    loads in the fine-tuning shield on the CPU too, in fp32."""
    from diffusers import StableDiffusionPipeline

    from dladiff_app.engine.models.loaders import folder_variant

    fp16_dir = tmp_path / "sd15-fp16"
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, local_files_only=True)
    pipe.to(torch.float16).save_pretrained(fp16_dir, variant="fp16", safe_serialization=True)
    weights = sorted(p.name for p in fp16_dir.rglob("*.safetensors"))
    assert weights and all(".fp16." in w for w in weights), weights
    assert folder_variant(fp16_dir, torch.float32) == "fp16"
    assert folder_variant(tiny_sd_dir, torch.float32) is None
    assert folder_variant(tiny_sd_dir, torch.float16) is None  # no fp16 files there

    out = tmp_path / "out"
    events: list[Event] = []
    job = ProtectJob(inputs=(_face_album(tmp_path / "in"),), output_dir=out, settings=BOTH)
    summary = run_job(job, _kit(fp16_dir, tmp_path, dlib_parts), events.append)
    assert (summary.done, summary.failed) == (1, 0), [e for e in events
                                                      if isinstance(e, PhotoFailed)]
    result = next(e.result for e in events if isinstance(e, PhotoDone))
    assert result.layers_done == ("layer1", "layer2", "polish")
    # The zero-shot budget (8) on top of layer 1's (7, derived from eps) on the face.
    assert result.linf is not None and 0 < result.linf <= 8.0 + BOTH.finetune_eps + 1e-3


def test_cli_and_model_manager_download_the_same_sd_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both front ends ask one rule (``download_fp16_weights``): on a CUDA machine both take
    the fp16 files, elsewhere both take the fp32 ones."""
    import argparse

    from dladiff_app.cli import models_cmd
    from dladiff_app.core.cancel import CancelToken
    from dladiff_app.core.settings import Settings
    from dladiff_app.engine import device
    from dladiff_app.engine.models.store import ModelStore
    from dladiff_app.engine.services import EngineModelService

    monkeypatch.setenv("DLADIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DLADIFF_CONFIG_DIR", str(tmp_path / "config"))
    fetched: dict[str, tuple[str, ...]] = {}
    route = {"name": ""}

    def fake_download(self: ModelStore, model_id: str, *a: Any, **k: Any) -> Path:
        fetched[route["name"]] = self._hub_files(self.spec(model_id))
        return tmp_path

    monkeypatch.setattr(ModelStore, "download", fake_download)
    for cuda in (True, False):
        monkeypatch.setattr(device, "resolve_device", lambda requested="auto", c=cuda: (
            device.DeviceInfo("cuda" if c else "cpu", "cuda:0" if c else "cpu", "X", None,
                              None, "test")))
        route["name"] = "cli"
        models_cmd.run_download(argparse.Namespace(names=["sd15"], yes=True, json=False))
        route["name"] = "gui"
        EngineModelService(tmp_path / "models", settings=Settings()).download(
            "sd15", lambda done, total: None, CancelToken())
        assert fetched["cli"] == fetched["gui"]
        assert any(".fp16." in f for f in fetched["gui"]) == cuda


def test_simulated_out_of_memory_steps_down_says_so_and_finishes(
        tiny_sd_dir: Path, tmp_path: Path, dlib_parts: tuple[Any, list[Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The first UNet pass of a PGD step raises CUDA's OutOfMemoryError once and a later one
    MPS's error text once: layer 1 steps down twice, finishes, and every photo carries the
    step-downs in its events and manifest entry."""
    real = sg.unet_loss
    failures = [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)")]
    calls = {"n": 0}

    def flaky(sur: Any, latents: torch.Tensor, draw: Any, reduce: bool = True) -> torch.Tensor:
        calls["n"] += 1
        if latents.requires_grad and failures and calls["n"] % 3 == 0:
            raise failures.pop(0)
        return real(sur, latents, draw, reduce)

    monkeypatch.setattr(sg, "unet_loss", flaky)
    settings = BOTH.with_overrides(layers=Layers.FINETUNE, polish_steps=0)
    out = tmp_path / "out"
    events: list[Event] = []
    job = ProtectJob(inputs=(_face_album(tmp_path / "in", ("a.png", "b.png")),),
                     output_dir=out, settings=settings)
    summary = run_job(job, _kit(tiny_sd_dir, tmp_path, dlib_parts, settings), events.append)
    assert not failures  # both simulated errors were raised
    assert (summary.done, summary.failed) == (2, 0), [e for e in events
                                                      if isinstance(e, PhotoFailed)]
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert sum("ran out of memory in the fine-tuning shield" in m for m in notices) >= 2
    assert any("gradient checkpointing on" in m for m in notices), notices
    for photo in _manifest_photos(out):
        assert photo["layers_done"] == ["layer1"]
        assert any("ran out of memory" in w for w in photo["warnings"])


def test_layer1_failure_falls_back_to_the_zero_shot_shield_with_a_notice(
        tiny_sd_dir: Path, tmp_path: Path, dlib_parts: tuple[Any, list[Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of memory at every rung: layer 1 gives up with a DeviceError, and the album's
    photos are still written, protected by the zero-shot shield, with the reason."""

    def no_memory(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(sg, "unet_loss", no_memory)
    out = tmp_path / "out"
    events: list[Event] = []
    album = _face_album(tmp_path / "in", ("a.png", "b.png"))
    job = ProtectJob(inputs=(album,), output_dir=out, settings=BOTH)
    summary = run_job(job, _kit(tiny_sd_dir, tmp_path, dlib_parts), events.append)
    assert (summary.done, summary.failed) == (2, 0), [e for e in events
                                                      if isinstance(e, PhotoFailed)]
    done = [e.result for e in events if isinstance(e, PhotoDone)]
    for res in done:
        assert res.layers_done == ("layer2",)
        clean = np.asarray(Image.open(album / Path(res.source).name), np.float32) / 255
        saved = np.asarray(Image.open(res.output), np.float32) / 255
        assert 0 < float(np.abs(saved - clean).max()) * 255 <= 8.0 + 1e-3  # really protected
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert sum("protected with the zero-shot shield only" in m for m in notices) == 2
    assert any("ran out of memory" in m and "fine-tuning shield failed" in m for m in notices)
    for photo in _manifest_photos(out):
        assert any("zero-shot shield only" in w for w in photo["warnings"])


def test_two_albums_and_a_second_job_load_stable_diffusion_once(
        tiny_sd_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted at the loader: one load for two albums, and none for the next job with other
    settings (the service keeps the base warm across kits)."""
    from dladiff_app.engine.services import EngineProtectService

    loads: list[Path] = []
    real = sg.load_sd_pipeline

    def counting(path: Path, **kwargs: Any) -> Any:
        loads.append(Path(path))
        return real(path, **kwargs)

    monkeypatch.setattr(sg, "load_sd_pipeline", counting)
    for name in ("anna", "ben"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.full((64, 80, 3), 100 if name == "anna" else 160, np.uint8)).save(
            tmp_path / name / "p.png")
    settings = BOTH.with_overrides(layers=Layers.FINETUNE, polish_steps=0, layer1_rounds=1)
    service = EngineProtectService(pipeline_dir=tiny_sd_dir, detector=None, encoders=[],
                                   working_size=TINY_SD_RESOLUTION,
                                   cache_dir=tmp_path / "prior_cache")
    from dladiff_app.core.cancel import CancelToken

    job = ProtectJob(inputs=(tmp_path / "anna", tmp_path / "ben"), output_dir=tmp_path / "o1",
                     settings=settings)
    events: list[Event] = []
    summary = service.protect(job, events.append, CancelToken())
    assert (summary.done, summary.failed) == (2, 0), [e for e in events
                                                      if isinstance(e, PhotoFailed)]
    assert loads == [tiny_sd_dir]
    other = ProtectJob(inputs=(tmp_path / "anna",), output_dir=tmp_path / "o2",
                       settings=settings.with_overrides(eps=4.0))
    assert service.protect(other, events.append, CancelToken()).done == 1
    assert loads == [tiny_sd_dir]  # a new kit (other settings), the same warm base


def test_pixel_loss_scale_recovers_gradients_fp16_would_flush_to_zero() -> None:
    """A loss whose pixel gradients are ~1e-9 in fp16: unscaled they underflow to zero (no
    PGD step would move); scaled, the signs survive. An overflow zeroes that step and halves
    the scale, without a host sync."""
    from dladiff_app.engine.shield.precision import PixelLossScale

    x = torch.linspace(0.1, 0.9, 64).reshape(1, 1, 8, 8).requires_grad_(True)

    def loss_of(v: torch.Tensor) -> torch.Tensor:
        return ((v.half() * 1e-4) ** 2).sum().float() * 1e-2

    (plain,) = PixelLossScale("cpu", enabled=False).grad(loss_of(x), [x])
    assert float(plain.abs().max()) == 0.0  # what an fp16 GPU gets without scaling
    scale = PixelLossScale("cpu", enabled=True, init=2.0 ** 12, growth_interval=2)
    (scaled,) = scale.grad(loss_of(x), [x])
    assert bool((scaled.sign() == 1).all())
    (again,) = scale.grad(loss_of(x), [x])
    assert float(scale.scale) == 2.0 ** 13  # grew after two good steps
    too_big = PixelLossScale("cpu", enabled=True, init=2.0 ** 40)
    (overflow,) = too_big.grad(loss_of(x) * 1e30, [x])
    assert float(overflow.abs().max()) == 0.0 and float(too_big.scale) == 2.0 ** 39
    assert torch.equal(again.sign(), scaled.sign())


def test_lora_step_with_a_grad_scaler_learns_and_returns_the_unscaled_loss(
        tiny_sd_dir: Path) -> None:
    """The fp16 path's LoRA step (GradScaler) on the CPU: the adapter moves, the loss it
    returns is the plain one (the scaled loss would be 65536 times larger)."""
    sur = sg.load_surrogate(tiny_sd_dir)
    sg.add_lora(sur, "a", seed=3)
    before = {k: v.clone() for k, v in sg.lora_state(sur, "a").items()}
    opt = sg.make_optimizer(sur, "a", 1e-3)
    images = torch.rand(2, 3, TINY_SD_RESOLUTION, TINY_SD_RESOLUTION,
                        generator=torch.Generator().manual_seed(0))
    moments = [sg.moments(sur, images)]
    scaler = torch.amp.GradScaler("cpu")
    loss = sg.lora_step_cached(sur, "a", opt, moments, torch.Generator().manual_seed(1),
                               TINY_SD_RESOLUTION, scaler)
    plain = sg.lora_step_cached(sur, "a", opt, moments, torch.Generator().manual_seed(1),
                                TINY_SD_RESOLUTION)
    assert loss.dim() == 0 and 0.1 < float(loss) < 10.0
    assert abs(float(loss) - float(plain)) < 0.2
    after = sg.lora_state(sur, "a")
    assert any(not torch.equal(before[k], after[k]) for k in before)
