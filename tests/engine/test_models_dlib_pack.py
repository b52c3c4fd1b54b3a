"""The offline dlib pack is found by path, without importing the broken package."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from dladiff_app.core.errors import ModelMissingError
from dladiff_app.engine.models import dlib_pack
from dladiff_app.engine.models.dlib_pack import find_dlib_pack


def test_find_dlib_pack_locates_real_files_without_importing_package() -> None:
    sys.modules.pop("face_recognition_models", None)
    pack = find_dlib_pack()
    for path in pack.files():
        assert path.is_file(), path
        assert path.stat().st_size > 100_000
    assert pack.recognition.name == "dlib_face_recognition_resnet_model_v1.dat"
    assert "face_recognition_models" not in sys.modules


def test_dlib_loads_the_pack() -> None:
    import dlib

    pack = find_dlib_pack()
    import numpy as np

    predictor = dlib.shape_predictor(str(pack.shape5))
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    shape = predictor(image, dlib.rectangle(8, 8, 56, 56))
    assert shape.num_parts == 5


def test_missing_package_raises_actionable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelMissingError, match="pip install face_recognition_models"):
        find_dlib_pack()


def test_incomplete_package_names_missing_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / dlib_pack.RECOGNITION_FILE).write_bytes(b"x")
    monkeypatch.setattr(dlib_pack, "package_models_dir", lambda: folder)
    with pytest.raises(ModelMissingError, match="mmod_human_face_detector.dat"):
        find_dlib_pack()
