"""ONNX -> torch conversion checked against onnxruntime on the tiny insightface-shaped models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from dladiff_app.core.errors import ModelIntegrityError, ModelMissingError, UnsupportedOnnxOp
from dladiff_app.engine.faces.onnx_to_torch import onnx_to_torch
from tests.engine.reference_runtime import verify_against_onnxruntime


def test_tiny_arcface_matches_onnxruntime(tiny_arcface_onnx: Path) -> None:
    module = onnx_to_torch(tiny_arcface_onnx)
    diff = verify_against_onnxruntime(tiny_arcface_onnx, module, n=2)
    assert diff <= 1e-4, f"max abs diff vs onnxruntime {diff}"
    ops = {n.op_type for n in onnx.load(str(tiny_arcface_onnx)).graph.node}
    # The fixture really exercises the recognizer op mix (so the check above means something).
    assert {"Conv", "BatchNormalization", "PRelu", "Add", "Gemm", "Flatten"} <= ops


def test_tiny_scrfd_matches_onnxruntime_and_loads_in_insightface(tiny_scrfd_onnx: Path) -> None:
    from insightface.model_zoo import get_model
    from insightface.model_zoo.scrfd import SCRFD

    assert isinstance(get_model(str(tiny_scrfd_onnx)), SCRFD)
    module = onnx_to_torch(tiny_scrfd_onnx)
    assert len(module.output_names) == 9
    assert verify_against_onnxruntime(tiny_scrfd_onnx, module, n=1) <= 1e-4


def test_converted_module_is_differentiable_and_batched(tiny_arcface_onnx: Path) -> None:
    module = onnx_to_torch(tiny_arcface_onnx)
    x = torch.rand(2, 3, 112, 112, requires_grad=True)
    y = module(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 512)
    y[0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad[0].abs().sum() > 0 and x.grad[1].abs().sum() == 0  # samples stay independent
    assert not any(p.requires_grad for p in module.parameters())


def test_unsupported_op_is_named(tmp_path: Path) -> None:
    node = onnx.helper.make_node("Hardmax", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "weird.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(UnsupportedOnnxOp, match="weird.onnx.*Hardmax"):
        onnx_to_torch(path)


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError, match="absent.onnx"):
        onnx_to_torch(tmp_path / "absent.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(ModelIntegrityError, match="bad.onnx"):
        onnx_to_torch(bad)


def test_unsupported_op_variant_is_a_typed_error_on_first_use(tmp_path: Path) -> None:
    weight = onnx.numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER")
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 8, 8])],
        [weight],
    )
    path = tmp_path / "same.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    module = onnx_to_torch(path)
    with pytest.raises(UnsupportedOnnxOp, match=r"same.onnx.*Conv \(Conv auto_pad SAME"):
        module(torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize("opset", [11, 13])
def test_split_expand_reduce_l2_match_onnxruntime(tmp_path: Path, opset: int) -> None:
    """EdgeFace's cross-covariance attention uses Split (sizes as an attribute before opset 13,
    as an input from 13), ReduceL2 and Expand (a normalisation): the converted graph matches
    onnxruntime and stays differentiable."""
    h = onnx.helper
    inits = [onnx.numpy_helper.from_array(np.array([1, 1, 4, 6], np.int64), "shape")]
    if opset >= 13:
        inits.append(onnx.numpy_helper.from_array(np.array([2, 1], np.int64), "sizes"))
        split = h.make_node("Split", ["x", "sizes"], ["a", "b"], axis=1)
    else:
        split = h.make_node("Split", ["x"], ["a", "b"], axis=1, split=[2, 1])
    nodes = [
        split,
        h.make_node("ReduceL2", ["a"], ["n"], axes=[1], keepdims=1),
        h.make_node("Max", ["n", "eps"], ["nc"]),
        h.make_node("Expand", ["nc", "shape"], ["ne"]),
        h.make_node("Div", ["b", "ne"], ["y"]),
    ]
    inits.append(onnx.numpy_helper.from_array(np.array(1e-6, np.float32), "eps"))
    graph = h.make_graph(
        nodes, "xca",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 6])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 4, 6])],
        inits,
    )
    path = tmp_path / f"xca{opset}.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", opset)]), str(path))
    module = onnx_to_torch(path)
    assert verify_against_onnxruntime(path, module, n=2) <= 1e-5
    x = torch.rand(1, 3, 4, 6, requires_grad=True)
    module(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
