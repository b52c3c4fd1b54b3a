"""The Stable Diffusion loader reads local files only and refuses pickled checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from dladiff_app.core.errors import ModelIntegrityError, ModelMissingError
from dladiff_app.engine.models.loaders import load_sd_pipeline


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
