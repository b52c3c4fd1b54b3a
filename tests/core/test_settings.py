"""Settings round-trip, tolerate bad files, and decide where models live."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from dladiff_app.core import paths
from dladiff_app.core.settings import Settings, load_settings, save_settings


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "settings.json"
    original = Settings(device="cpu", cache_dir="/x", model_paths={"sd15": "/m/sd"},
                        jpeg_quality=80, first_run_done=True)
    save_settings(original, path)
    assert load_settings(path) == original
    assert not [p for p in path.parent.iterdir() if p.name != "settings.json"]  # no temp left


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    assert load_settings(tmp_path / "nope.json") == Settings()


def test_unknown_keys_ignored_and_bad_types_defaulted(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"device": "mps", "future_option": 3, "jpeg_quality": "high",
                                "keep_metadata": 1, "model_paths": {"sd15": 5}}))
    settings = load_settings(path)
    assert settings.device == "mps"
    assert settings.jpeg_quality == 95
    assert settings.keep_metadata is False
    assert settings.model_paths == {}


def test_corrupt_file_is_backed_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "settings.json"
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert load_settings(path) == Settings()
    backups = list(tmp_path.glob("settings.json.bad-*"))
    assert len(backups) == 1 and backups[0].read_text() == "{not json"
    assert "corrupt" in caplog.text


def test_newer_schema_gives_defaults_and_keeps_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "settings.json"
    text = json.dumps({"schema_version": 99, "device": "cuda"})
    path.write_text(text)
    with caplog.at_level(logging.WARNING):
        assert load_settings(path) == Settings()
    assert path.read_text() == text
    assert "newer" in caplog.text


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.ENV_CACHE_DIR, raising=False)
    monkeypatch.setenv(paths.ENV_CONFIG_DIR, str(tmp_path / "cfg"))
    default = paths.cache_dir(Settings())
    assert default.name.lower() == "dladiff" or "dladiff" in str(default).lower()
    chosen = Settings(cache_dir=str(tmp_path / "from_settings"))
    assert paths.cache_dir(chosen) == tmp_path / "from_settings"
    assert paths.models_dir(chosen) == tmp_path / "from_settings" / "models"
    monkeypatch.setenv(paths.ENV_CACHE_DIR, str(tmp_path / "from_env"))
    assert paths.cache_dir(chosen) == tmp_path / "from_env"


def test_configure_ml_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_HOME", "HF_HUB_CACHE", "INSIGHTFACE_HOME", "TORCH_HOME",
                 "HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    values = paths.configure_ml_environment(tmp_path / "models")
    import os

    assert os.environ["HF_HOME"] == str(tmp_path / "models" / "huggingface")
    assert os.environ["HF_HUB_CACHE"] == values["HF_HUB_CACHE"]
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert os.environ["HF_HUB_OFFLINE"] == "1"
