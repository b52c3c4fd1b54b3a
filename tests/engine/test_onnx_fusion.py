"""LayerNorm and GELU chains of an exported graph run as one torch op each: the same function
(checked against onnxruntime and against the node-by-node module), fused only when safe."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from dladiff_app.engine.faces import onnx_to_torch as ot
from dladiff_app.engine.faces.onnx_fusion import GELU, LAYER_NORM
from dladiff_app.engine.faces.onnx_to_torch import onnx_to_torch
from tests.engine.reference_runtime import verify_against_onnxruntime


class _Block(nn.Module):
    """A transformer MLP block as EdgeFace has them: norm, linear, exact GELU, linear, residual
    (channels last, as after EdgeFace's Transpose)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))


def _export(module: nn.Module, path: Path, opset: int = 16) -> Path:
    # Opset 16 spells LayerNorm as ReduceMean/Sub/Pow/.../Add and GELU as Div/Erf/Add/Mul/Mul,
    # as the EdgeFace file does.
    torch.onnx.export(module.eval(), (torch.randn(1, 4, 5, 8),), str(path), opset_version=opset,
                      dynamo=False, input_names=["x"], output_names=["y"])
    return path


def _plain(path: Path, monkeypatch: pytest.MonkeyPatch) -> ot.OnnxModule:
    with monkeypatch.context() as m:
        m.setattr(ot, "fuse", lambda nodes, consts, outputs: nodes)
        return onnx_to_torch(path)


def test_exported_chains_are_fused_and_match(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = _export(_Block(), tmp_path / "block.onnx")
    ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert ops["Erf"] == 1 and ops["ReduceMean"] == 2 and ops["Sqrt"] == 1  # really spelled out
    fused, plain = onnx_to_torch(path), _plain(path, monkeypatch)
    kinds = Counter(op for op, *_ in fused._nodes)
    assert kinds[LAYER_NORM] == 1 and kinds[GELU] == 1
    assert not {"Erf", "Sqrt", "Pow", "ReduceMean"} & set(kinds)
    assert len(fused._nodes) < len(plain._nodes)
    assert verify_against_onnxruntime(path, fused, n=2) <= 1e-5
    x = torch.randn(1, 4, 5, 8)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = fused(a), plain(b)
    assert isinstance(ya, torch.Tensor) and isinstance(yb, torch.Tensor)
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)
    w = torch.randn_like(ya)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    assert a.grad is not None and b.grad is not None
    torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4)


class _Shared(nn.Module):
    """A LayerNorm whose centred input is also read outside the chain: not a LayerNorm to fuse."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x - x.mean(dim=-1, keepdim=True)
        n = d / torch.sqrt((d ** 2).mean(dim=-1, keepdim=True) + 1e-5)
        return n + 0.5 * d


def test_a_chain_read_elsewhere_is_left_alone(tmp_path: Path) -> None:
    path = _export(_Shared(), tmp_path / "shared.onnx")
    module = onnx_to_torch(path)
    assert LAYER_NORM not in {op for op, *_ in module._nodes}
    assert verify_against_onnxruntime(path, module, n=2) <= 1e-5


def test_residual_branches_survive_fusion(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The skip gradient (``gradient_decay``) finds the same residual additions in the fused
    graph as in the node-by-node one."""
    path = _export(_Block(), tmp_path / "block.onnx")
    fused, plain = onnx_to_torch(path), _plain(path, monkeypatch)

    def adds(m: ot.OnnxModule) -> list[str]:
        return sorted(m._nodes[i][2][0] for i in m._branches)

    assert adds(fused) == adds(plain) and len(adds(fused)) == 1
