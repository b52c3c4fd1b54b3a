"""The skip-gradient lever: residual branches of an encoder get a scaled gradient, the forward
pass and everything outside the context stay bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from dladiff_app.engine.faces.dlib_resnet import _Block
from dladiff_app.engine.faces.gradient_decay import current_gamma, residual_gradient_decay
from dladiff_app.engine.faces.onnx_to_torch import OnnxModule

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _residual_graph() -> onnx.ModelProto:
    """y = x + conv(relu(conv(x))) followed by a plain conv: one residual Add."""
    rng = np.random.default_rng(0)
    w = [numpy_helper.from_array(rng.normal(size=(3, 3, 3, 3)).astype(np.float32) * 0.3,
                                 name=f"w{i}") for i in range(3)]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "w1"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["x", "c"], ["d"]),
        helper.make_node("Conv", ["d", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])], initializer=w)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _grad(module: torch.nn.Module, x: torch.Tensor, gamma: float | None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.clone().requires_grad_(True)
    if gamma is None:
        y = module(leaf)
        return y.detach(), torch.autograd.grad(y.square().sum(), leaf)[0]
    with residual_gradient_decay(gamma):
        y = module(leaf)
        g = torch.autograd.grad(y.square().sum(), leaf)[0]
    return y.detach(), g


@pytest.mark.parametrize("make", [lambda: OnnxModule(_residual_graph()),
                                  lambda: _Block(3, 3, down=False)])
def test_branch_gradient_is_scaled_and_the_forward_is_unchanged(make) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    module = make().eval()
    x = torch.rand(1, 3, 8, 8)
    y_plain, g_plain = _grad(module, x, None)
    y_one, g_one = _grad(module, x, 1.0)
    y_half, g_half = _grad(module, x, 0.5)
    y_zero, g_zero = _grad(module, x, 1e-9)
    assert torch.equal(y_plain, y_one) and torch.equal(y_plain, y_half)
    assert torch.equal(g_plain, g_one)  # gamma 1 adds no autograd node at all
    assert not torch.allclose(g_plain, g_half)
    # With the branch's gradient (almost) cut, what is left is the skip path's.
    assert not torch.allclose(g_zero, g_plain)
    assert current_gamma() == 1.0  # the context restores the thread's setting


def test_onnx_finds_the_residual_branch() -> None:
    module = OnnxModule(_residual_graph())
    assert list(module._branches.values()) == [1]  # Add(x, c): c is the branch


def test_gamma_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError), residual_gradient_decay(0.0):
        pass
