"""The registry builds the detector/encoders from what the model store holds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dladiff_app.core.errors import ModelMissingError
from dladiff_app.engine.faces.arcface import ArcFaceEncoder
from dladiff_app.engine.faces.registry import (
    available_detector,
    available_encoders,
    encoder_statuses,
)
from dladiff_app.engine.faces.scrfd import ScrfdDetector
from dladiff_app.engine.models.store import ModelStore


@pytest.fixture
def store(tmp_path: Path, tiny_scrfd_onnx: Path, tiny_arcface_onnx: Path) -> ModelStore:
    """A store whose buffalo_l is a local copy made of the tiny stand-ins (real ONNX files)."""
    pack = tmp_path / "my_buffalo_l"
    pack.mkdir()
    shutil.copy(tiny_scrfd_onnx, pack / "det_10g.onnx")
    shutil.copy(tiny_arcface_onnx, pack / "w600k_r50.onnx")
    return ModelStore(tmp_path / "models", settings_paths={"buffalo_l": str(pack)}, offline=True)


def test_present_and_absent_encoders_are_reported(store: ModelStore) -> None:
    statuses = {s.name: s for s in encoder_statuses(store)}
    assert statuses["buffalo_l"].available and "w600k_r50.onnx" in statuses["buffalo_l"].reason
    assert not statuses["antelopev2"].available and statuses["antelopev2"].reason
    assert not statuses["clip_vit_h14"].available


def test_available_encoders_and_detector(store: ModelStore) -> None:
    encoders = available_encoders(store, names=["buffalo_l"])
    assert len(encoders) == 1 and isinstance(encoders[0], ArcFaceEncoder)
    assert encoders[0].name == "buffalo_l" and encoders[0].metric == "cosine"
    assert isinstance(available_detector(store), ScrfdDetector)
    every = available_encoders(store)  # whatever is present: at least buffalo_l
    assert "buffalo_l" in [e.name for e in every]


def test_asking_for_an_absent_encoder_says_why(store: ModelStore) -> None:
    with pytest.raises(ModelMissingError, match="antelopev2"):
        available_encoders(store, names=["antelopev2"])
    with pytest.raises(ModelMissingError, match="Unknown identity encoder 'foo'"):
        available_encoders(store, names=["foo"])
