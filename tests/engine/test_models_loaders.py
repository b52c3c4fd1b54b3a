"""Loaders read tiny local models through the same store/loader code the real models use."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from dladiff_app.core.errors import ModelIntegrityError, ModelMissingError
from dladiff_app.engine.models.loaders import (
    load_clip_vision,
    load_sd_from_store,
    load_sd_pipeline,
    load_torch_weights,
    onnx_path,
    open_onnx_session,
)
from dladiff_app.engine.models.store import ModelStore


@pytest.mark.slow  # builds the tiny SD fixture and imports diffusers: ~25 s on 2 busy cores
def test_sd_folder_through_store(tmp_path: Path, tiny_sd_dir: Path) -> None:
    store = ModelStore(tmp_path / "models", offline=True)
    store.use_local("sd15", tiny_sd_dir)
    pipe = load_sd_from_store(store, device="cpu", dtype=torch.float32)
    assert pipe.safety_checker is None
    assert pipe.unet.dtype == torch.float32 and pipe.unet.device.type == "cpu"
    latents = torch.zeros(1, 4, 8, 8)
    with torch.no_grad():
        out = pipe.unet(latents, 10, encoder_hidden_states=torch.zeros(1, 77, 32)).sample
    assert out.shape == latents.shape


def test_single_file_without_config_is_actionable_and_never_online(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A single ``--pipeline x.safetensors`` used to make diffusers look its configuration up
    on the hub during protect (online mode): now it is a local-only load or a clear error."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("DLADIFF_CACHE_DIR", str(tmp_path / "cache"))  # no downloaded sd15
    import diffusers

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("from_single_file was called without a local configuration")

    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_single_file", no_network)
    (tmp_path / "models").mkdir()
    ckpt = tmp_path / "models" / "model.safetensors"
    ckpt.write_bytes(b"0")
    with pytest.raises(ModelMissingError, match="dladiff models download sd15"):
        load_sd_pipeline(ckpt)
    pickle_ckpt = tmp_path / "model.ckpt"
    pickle_ckpt.write_bytes(b"0")
    with pytest.raises(ModelIntegrityError, match="only .safetensors"):
        load_sd_pipeline(pickle_ckpt)


def test_onnx_pack_through_store(tmp_path: Path, tiny_scrfd_onnx: Path,
                                 tiny_arcface_onnx: Path) -> None:
    pack = tmp_path / "pack"
    pack.mkdir()
    shutil.copy(tiny_scrfd_onnx, pack / "det_10g.onnx")
    shutil.copy(tiny_arcface_onnx, pack / "w600k_r50.onnx")
    store = ModelStore(tmp_path / "models", offline=True)
    store.use_local("buffalo_l", pack)
    rec = onnx_path(store, "buffalo_l", "w600k_r50.onnx")
    session = open_onnx_session(rec)
    assert session.get_providers()[-1] == "CPUExecutionProvider"
    shape = session.get_inputs()[0].shape
    assert shape[-2:] == [112, 112]
    with pytest.raises(ModelMissingError, match="dladiff models download antelopev2"):
        onnx_path(store, "antelopev2", "glintr100.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(ModelIntegrityError, match="bad.onnx"):
        open_onnx_session(bad)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_torch_weights_only(tmp_path: Path) -> None:
    good = tmp_path / "adapter.bin"
    torch.save({"image_proj.weight": torch.ones(2, 2)}, good)
    assert torch.equal(load_torch_weights(good)["image_proj.weight"], torch.ones(2, 2))
    evil = tmp_path / "evil.bin"
    with open(evil, "wb") as handle:
        pickle.dump({"x": _Evil()}, handle)
    with pytest.raises(ModelIntegrityError, match="refused"):
        load_torch_weights(evil)


def test_clip_vision_from_local_folder(tmp_path: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                              num_hidden_layers=2, image_size=32, patch_size=8,
                              projection_dim=16)
    folder = tmp_path / "image_encoder"
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    model = load_clip_vision(folder)
    with torch.no_grad():
        embeds = model(pixel_values=torch.zeros(1, 3, 32, 32)).image_embeds
    assert embeds.shape == (1, 16)
    with pytest.raises(ModelIntegrityError):
        load_clip_vision(tmp_path / "nothing")


def test_single_file_uses_a_local_configuration_only(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import diffusers

    calls: list[dict[str, object]] = []

    class Loaded:
        def to(self, device: str) -> Loaded:
            return self

    def record(path: str, **kwargs: object) -> Loaded:
        calls.append({"path": path, **kwargs})
        return Loaded()

    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_single_file", record)
    folder = tmp_path / "my-sd"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    ckpt = folder / "model.safetensors"  # a checkpoint inside a diffusers folder
    ckpt.write_bytes(b"0")
    load_sd_pipeline(ckpt)
    assert calls and calls[0]["config"] == str(folder) and calls[0]["local_files_only"] is True
