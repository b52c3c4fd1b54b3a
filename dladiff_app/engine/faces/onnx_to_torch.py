"""Run an ONNX graph as a differentiable ``torch.nn.Module`` (our own converter, no torch.fx).

Why: the zero-shot shield needs gradients through insightface's recognizers
(``w600k_r50.onnx``, ``glintr100.onnx``), which ship only as ONNX. onnxruntime gives no input
gradients, and onnx2torch drags in torchvision (which replaces the CPU torch here).

The module keeps the graph's initializers as buffers (frozen weights: we differentiate with
respect to the input, never the weights) and executes the node list in its stored order, which
ONNX requires to be topological. Every node whose inputs are all constants (a ``Constant``, a
quantised weight's ``DequantizeLinear``, a weight's ``Reshape``) is evaluated once when the module
is built: its float results become buffers, so ``module.to(device)`` moves them and a forward pass
creates no tensor on the host; integer constants (shapes, axes) stay on the host, where reading
them is free. Ops cover the CNN recognizers/detectors exported from PyTorch and
MXNet. Anything else raises :class:`UnsupportedOnnxOp` at load time, naming every missing op;
an op variant we do not implement (e.g. ``auto_pad=SAME_*``) raises it on the first forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from dladiff_app.core.errors import ModelIntegrityError, ModelMissingError, UnsupportedOnnxOp
from dladiff_app.engine.faces.gradient_decay import current_gamma, decay, residual_branches
from dladiff_app.engine.faces.onnx_fusion import FUSED_OPS, fuse

Tensor = torch.Tensor
_OpFn = Callable[[list[Tensor | None], dict[str, Any]], Tensor | tuple[Tensor, ...]]

# ONNX TensorProto data type -> torch dtype (the ones that occur in these models).
_DTYPES: dict[int, torch.dtype] = {
    1: torch.float32,
    2: torch.uint8,
    3: torch.int8,
    5: torch.int16,
    6: torch.int32,
    7: torch.int64,
    9: torch.bool,
    10: torch.float16,
    11: torch.float64,
}


def _ints(t: Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _same_pads(pads: Sequence[int], n: int) -> tuple[bool, list[int]]:
    """ONNX pads are [begin_1..begin_n, end_1..end_n]; returns (symmetric?, F.pad order)."""
    begins, ends = list(pads[:n]), list(pads[n:])
    f_pad: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends), strict=True):
        f_pad += [b, e]
    return begins == ends, f_pad


def _conv(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    inp, w, b = x[0], x[1], x[2] if len(x) > 2 else None
    assert inp is not None and w is not None
    n = w.dim() - 2
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise NotImplementedError("Conv auto_pad SAME_*")
    pads = a.get("pads", [0] * 2 * n)
    sym, f_pad = _same_pads(pads, n)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    if n == 2 and inp.device.type == "cpu":
        # Channels-last lets oneDNN take every 2-D conv (NCHW sends the 1x1 ones to a slower
        # path at batch 1): measured 7% (SFace) and 15% (EdgeFace) less time forward and back
        # on one thread. The result is the same tensor up to float rounding, in NHWC strides.
        inp = inp.contiguous(memory_format=torch.channels_last)
    if not sym:
        inp = F.pad(inp, f_pad)
    return conv(
        inp,
        w,
        b,
        stride=a.get("strides", [1] * n),
        padding=pads[:n] if sym else 0,
        dilation=a.get("dilations", [1] * n),
        groups=a.get("group", 1),
    )


def _batchnorm(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    inp, scale, bias, mean, var = x[:5]
    assert inp is not None
    # Inference semantics: the stored running statistics, never batch statistics.
    return F.batch_norm(inp, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))


def _prelu(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    inp, slope = x[0], x[1]
    assert inp is not None and slope is not None
    # relu(x) - a * relu(-x): two cheap masks instead of where() (forward) or torch's PReLU
    # kernel, whose backward also computes the slope's gradient (3x the cost here).
    return F.relu(inp) - slope * F.relu(-inp)


def _gemm(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    m, w = x[0], x[1]
    assert m is not None and w is not None
    if a.get("transA", 0):
        m = m.t()
    if a.get("transB", 0):
        w = w.t()
    y = a.get("alpha", 1.0) * (m @ w)
    if len(x) > 2 and x[2] is not None:
        y = y + a.get("beta", 1.0) * x[2]
    return y


def _flatten(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    inp = x[0]
    assert inp is not None
    axis = a.get("axis", 1)
    axis = axis + inp.dim() if axis < 0 else axis
    lead = math.prod(inp.shape[:axis])
    return inp.reshape(lead, -1)


def _reshape(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    inp = x[0]
    assert inp is not None
    shape = _ints(x[1])
    if not a.get("allowzero", 0):
        # 0 copies the input's dimension at that position (ONNX semantics).
        shape = [inp.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return inp.reshape(shape)


def _axes(x: list[Tensor | None], a: dict[str, Any]) -> list[int] | None:
    if "axes" in a:
        return list(a["axes"])
    if len(x) > 1 and x[1] is not None:
        return _ints(x[1])
    return None


def _unsqueeze(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    inp = x[0]
    assert inp is not None
    axes = _axes(x, a) or []
    rank = inp.dim() + len(axes)
    for ax in sorted(v % rank for v in axes):
        inp = inp.unsqueeze(ax)
    return inp


def _squeeze(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    inp = x[0]
    assert inp is not None
    axes = _axes(x, a)
    if axes is None:
        return inp.squeeze()
    for ax in sorted((v % inp.dim() for v in axes), reverse=True):
        inp = inp.squeeze(ax)
    return inp


def _gather(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    data, idx = x[0], x[1]
    assert data is not None and idx is not None
    axis = a.get("axis", 0) % data.dim()
    idx = idx.long()
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    out = torch.index_select(data, axis, idx.reshape(-1))
    return out.reshape((*data.shape[:axis], *idx.shape, *data.shape[axis + 1 :]))


def _slice(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    data = x[0]
    assert data is not None
    if "starts" in a:  # opset < 10
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(x[1]), _ints(x[2])
        axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(starts)))
        steps = _ints(x[4]) if len(x) > 4 and x[4] is not None else [1] * len(starts)
    index: list[slice] = [slice(None)] * data.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
        ax %= data.dim()
        size = data.shape[ax]
        if st < 0:
            raise NotImplementedError("Slice with negative steps")
        s = max(0, min(size, s + size if s < 0 else s))
        e = max(0, min(size, e + size if e < 0 else e))
        index[ax] = slice(s, e, st)
    return data[tuple(index)]


def _concat(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    return torch.cat([t for t in x if t is not None], dim=a["axis"])


def _shape(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    inp = x[0]
    assert inp is not None
    dims = list(inp.shape)[a.get("start", 0) : a.get("end")]
    return torch.tensor(dims, dtype=torch.int64)


def _constant(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in a:
            v = a[key]
            if isinstance(v, Tensor):
                return v
            dtype = torch.float32 if "float" in key else torch.int64
            return torch.tensor(v, dtype=dtype)
    raise NotImplementedError("Constant without a numeric value")


def _constant_of_shape(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    value = a.get("value", torch.zeros(1))
    return torch.full(_ints(x[0]), value.reshape(-1)[0].item(), dtype=value.dtype)


def _pool(kind: str) -> _OpFn:
    def run(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
        inp = x[0]
        assert inp is not None
        n = inp.dim() - 2
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise NotImplementedError(f"{kind} auto_pad SAME_*")
        k = a["kernel_shape"]
        strides = a.get("strides", [1] * n)
        pads = a.get("pads", [0] * 2 * n)
        sym, f_pad = _same_pads(pads, n)
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "max":
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
            if not sym:
                inp = F.pad(inp, f_pad, value=-math.inf)
            return fn(inp, k, strides, pads[:n] if sym else 0, a.get("dilations", [1] * n), ceil)
        afn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
        include = bool(a.get("count_include_pad", 0))
        if not sym:
            if not include and any(f_pad):
                raise NotImplementedError("AveragePool asymmetric pads without count_include_pad")
            inp = F.pad(inp, f_pad)
        return afn(inp, k, strides, pads[:n] if sym else 0, ceil, include)  # type: ignore[operator]

    return run


def _global_avg(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    inp = x[0]
    assert inp is not None
    return inp.mean(dim=tuple(range(2, inp.dim())), keepdim=True)


def _reduce(kind: str) -> _OpFn:
    def run(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
        inp = x[0]
        assert inp is not None
        axes = _axes(x, a)
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return inp
            axes = list(range(inp.dim()))
        if kind == "l2":
            return torch.linalg.vector_norm(inp, ord=2, dim=tuple(axes), keepdim=keep)
        fn = {"mean": torch.mean, "sum": torch.sum}[kind]
        return fn(inp, dim=tuple(axes), keepdim=keep)

    return run


def _pad(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    inp = x[0]
    assert inp is not None
    pads = list(a["pads"]) if "pads" in a else _ints(x[1])
    value = float(a.get("value", 0.0))
    if len(x) > 2 and x[2] is not None:
        value = float(x[2].reshape(-1)[0].item())
    _, f_pad = _same_pads(pads, inp.dim())
    mode = a.get("mode", "constant")
    if mode == "constant":
        return F.pad(inp, f_pad, value=value)
    # reflect/edge apply to the spatial dimensions only in torch: drop the N, C zero pads.
    spatial = f_pad[: 2 * (inp.dim() - 2)]
    return F.pad(inp, spatial, mode={"reflect": "reflect", "edge": "replicate"}[mode])


def _clip(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    inp = x[0]
    assert inp is not None
    lo = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
    hi = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
    return torch.clamp(inp, lo, hi)  # type: ignore[arg-type]


def _unary(fn: Callable[[Tensor], Tensor]) -> _OpFn:
    return lambda x, a: fn(x[0])  # type: ignore[arg-type]


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> _OpFn:
    return lambda x, a: fn(x[0], x[1])  # type: ignore[arg-type]


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> _OpFn:
    def run(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
        ts = [t for t in x if t is not None]
        out = ts[0]
        for t in ts[1:]:
            out = fn(out, t)
        return out

    return run


def _cast(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    inp = x[0]
    assert inp is not None
    return inp.to(_DTYPES[a["to"]])


def _dequantize(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    """``(q - zero_point) * scale``: per tensor, per ``axis``, or per block of ``block_size``
    elements along ``axis`` (opset 21's blocked quantisation, as in OpenCV Zoo's int8 models)."""
    q, scale = x[0], x[1]
    assert q is not None and scale is not None
    zero = x[2] if len(x) > 2 and x[2] is not None else torch.zeros((), dtype=q.dtype)
    qf, zf, sf = q.to(torch.float32), zero.to(torch.float32), scale.to(torch.float32)
    if sf.dim() == 0 or sf.numel() == 1 and q.dim() != sf.dim():
        return (qf - zf.reshape(())) * sf.reshape(())
    axis = a.get("axis", 1) % q.dim()
    block = int(a.get("block_size", 0))
    if block:
        size = q.shape[axis]
        sf = sf.repeat_interleave(block, dim=axis).narrow(axis, 0, size)
        zf = zf.repeat_interleave(block, dim=axis).narrow(axis, 0, size) if zf.dim() else zf
        return (qf - zf) * sf
    shape = [1] * q.dim()
    shape[axis] = -1
    return (qf - zf.reshape(shape if zf.dim() else ())) * sf.reshape(shape)


def _dropout(x: list[Tensor | None], a: dict[str, Any]) -> tuple[Tensor, ...]:
    inp = x[0]
    assert inp is not None
    return inp, torch.ones_like(inp, dtype=torch.bool)


def _expand(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    inp, shape = x[0], x[1]
    assert inp is not None and shape is not None
    # ONNX broadcasts both ways: a 1 in ``shape`` keeps the input's size. (Not with
    # torch.broadcast_shapes: its first call imports sympy, 0.7 s inside the first photo.)
    want = [int(v) for v in shape.tolist()]
    have = [1] * (len(want) - inp.dim()) + list(inp.shape)
    want = [1] * (len(have) - len(want)) + want
    out = []
    for h, w in zip(have, want, strict=True):
        if h != w and 1 not in (h, w):
            raise ValueError(f"Expand: shape {want} does not broadcast with {list(inp.shape)}")
        out.append(w if h == 1 else h)
    return inp.expand(out)


def _split(x: list[Tensor | None], a: dict[str, Any]) -> tuple[Tensor, ...]:
    inp = x[0]
    assert inp is not None
    axis = a.get("axis", 0)
    # The sizes: an attribute up to opset 12, an optional second input from 13, else equal parts.
    sizes = a.get("split")
    if sizes is None and len(x) > 1 and x[1] is not None:
        sizes = [int(v) for v in x[1].tolist()]
    if sizes is None:
        if "num_outputs" not in a:
            raise NotImplementedError("equal parts without num_outputs")
        return tuple(torch.tensor_split(inp, int(a["num_outputs"]), dim=axis))
    return tuple(torch.split(inp, list(sizes), dim=axis))


def _div(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    p, q = x[0], x[1]
    assert p is not None and q is not None
    if not p.is_floating_point() and not q.is_floating_point():
        return torch.div(p, q, rounding_mode="trunc")
    return p / q


_OPS: dict[str, _OpFn] = {
    "Conv": _conv,
    "BatchNormalization": _batchnorm,
    "PRelu": _prelu,
    "Relu": _unary(torch.relu),
    "LeakyRelu": lambda x, a: F.leaky_relu(x[0], a.get("alpha", 0.01)),  # type: ignore[arg-type]
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Neg": _unary(torch.neg),
    "Sqrt": _unary(torch.sqrt),
    "Abs": _unary(torch.abs),
    "Erf": _unary(torch.erf),
    "Clip": _clip,
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _div,
    "Pow": _binary(torch.pow),
    "MatMul": _binary(torch.matmul),
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add),
    "Gemm": _gemm,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": lambda x, a: x[0].permute(  # type: ignore[union-attr]
        a.get("perm", list(reversed(range(x[0].dim()))))  # type: ignore[union-attr]
    ),
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": _concat,
    "Shape": _shape,
    "Gather": _gather,
    "Slice": _slice,
    "Cast": _cast,
    "Identity": _unary(lambda t: t),
    "Dropout": _dropout,
    "DequantizeLinear": _dequantize,
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "GlobalAveragePool": _global_avg,
    "AveragePool": _pool("avg"),
    "MaxPool": _pool("max"),
    "ReduceMean": _reduce("mean"),
    "ReduceSum": _reduce("sum"),
    "ReduceL2": _reduce("l2"),
    "Expand": _expand,
    "Split": _split,
    "Softmax": lambda x, a: torch.softmax(x[0], a.get("axis", -1)),  # type: ignore[arg-type]
    "Pad": _pad,
}

SUPPORTED_OPS: frozenset[str] = frozenset(_OPS)


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in node.attribute:
        v = onnx.helper.get_attribute_value(attr)
        if isinstance(v, onnx.TensorProto):
            v = torch.from_numpy(np.array(numpy_helper.to_array(v)))
        elif isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list | tuple):
            v = list(v)
        out[attr.name] = v
    return out


_Node = tuple[str, list[str], list[str], dict[str, Any]]


def _fold_batchnorm(nodes: list[_Node], consts: dict[str, Tensor],
                    outputs: set[str]) -> list[_Node]:
    """Fold every inference BatchNormalization that follows a Conv with constant weights (and
    reads nothing else of it) into that Conv's weight and bias: the same function up to float
    rounding, one op less forward and backward. New constants are added to ``consts``."""
    readers: dict[str, int] = {}
    for _, ins, _, _ in nodes:
        for name in ins:
            readers[name] = readers.get(name, 0) + 1
    producer = {outs[0]: i for i, (op, _, outs, _) in enumerate(nodes) if op == "Conv"}
    drop: set[int] = set()
    out = list(nodes)
    for i, (op, ins, outs, attrs) in enumerate(nodes):
        if op != "BatchNormalization" or len(outs) != 1 or ins[0] not in producer:
            continue
        j = producer[ins[0]]
        _, cins, _, cattrs = nodes[j]
        params = ins[1:5]
        if (readers.get(ins[0]) != 1 or ins[0] in outputs or cins[1] not in consts
                or (len(cins) > 2 and cins[2] and cins[2] not in consts)
                or len(params) != 4 or any(p not in consts for p in params)):
            continue
        scale, bias, mean, var = (consts[p].to(torch.float64) for p in params)
        k = scale / torch.sqrt(var + float(attrs.get("epsilon", 1e-5)))
        w = consts[cins[1]].to(torch.float64)
        b = (consts[cins[2]].to(torch.float64) if len(cins) > 2 and cins[2]
             else torch.zeros_like(k))
        wname, bname = f"{outs[0]}::folded_w", f"{outs[0]}::folded_b"
        consts[wname] = (w * k.view(-1, *([1] * (w.dim() - 1)))).to(torch.float32)
        consts[bname] = ((b - mean) * k + bias).to(torch.float32)
        out[j] = ("Conv", [cins[0], wname, bname], list(outs), cattrs)
        drop.add(i)
    return [n for i, n in enumerate(out) if i not in drop]


def _run_node(node: tuple[str, list[str], list[str], dict[str, Any]], env: dict[str, Tensor],
              source: str) -> tuple[Tensor, ...]:
    op, ins, _, attrs = node
    args: list[Tensor | None] = [env[n] if n else None for n in ins]
    try:
        result = (_OPS.get(op) or FUSED_OPS[op])(args, attrs)
    except NotImplementedError as exc:  # a variant of a known op: typed, names the file
        raise UnsupportedOnnxOp(source, [f"{op} ({exc})"]) from exc
    return result if isinstance(result, tuple) else (result,)


class OnnxModule(nn.Module):
    """An ONNX graph executed with torch ops, differentiable with respect to its inputs.

    ``forward(*inputs)`` takes the graph inputs in order (float32 tensors, shapes as the ONNX
    file declares, with any batch size where the file allows it) and returns the single output
    tensor, or a tuple when the graph has several outputs. Weights are frozen buffers.
    """

    def __init__(self, model: onnx.ModelProto, source: str = "model.onnx") -> None:
        super().__init__()
        graph = model.graph
        unsupported = [n.op_type for n in graph.node if n.op_type not in _OPS]
        if unsupported:
            raise UnsupportedOnnxOp(source, unsupported)
        self.source = source
        consts: dict[str, Tensor] = {
            init.name: torch.from_numpy(np.array(numpy_helper.to_array(init)).copy())
            for init in graph.initializer
        }
        init_names = set(consts)
        self.input_names = [v.name for v in graph.input if v.name not in init_names]
        self.input_shapes: list[list[int | str]] = [
            [d.dim_value if d.dim_value > 0 else (d.dim_param or "?") for d in
             v.type.tensor_type.shape.dim]
            for v in graph.input
            if v.name not in init_names
        ]
        nodes = []
        for n in graph.node:
            node = (n.op_type, list(n.input), list(n.output), _attributes(n))
            if all(not name or name in consts for name in node[1]):
                for name, value in zip(node[2], _run_node(node, consts, source), strict=False):
                    if name:
                        consts[name] = value
            else:
                nodes.append(node)
        nodes = _fold_batchnorm(nodes, consts, {v.name for v in graph.output})
        nodes = fuse(nodes, consts, {v.name for v in graph.output})
        used = {name for _, ins, _, _ in nodes for name in ins}
        used |= {v.name for v in graph.output}
        # Float constants are buffers (they follow .to(device)); integer ones (shapes, axes,
        # indices) stay plain host tensors, read with .tolist() at no device sync.
        self._const_names: dict[str, str] = {}
        self._host_consts: dict[str, Tensor] = {}
        for name in sorted(used & set(consts)):
            value = consts[name]
            if value.is_floating_point():
                buf = f"w{len(self._const_names)}"
                self.register_buffer(buf, value.contiguous(), persistent=True)
                self._const_names[name] = buf
            else:
                self._host_consts[name] = value
        self.output_names = [v.name for v in graph.output]
        self._nodes = nodes
        # Free intermediate tensors after their last use (autograd keeps what it needs).
        last_use: dict[str, int] = {}
        for i, (_, ins, _, _) in enumerate(self._nodes):
            for name in ins:
                last_use[name] = i
        self._release = [
            [name for name in ins if last_use.get(name) == i and name not in self.output_names]
            for i, (_, ins, _, _) in enumerate(self._nodes)
        ]
        self._branches = residual_branches(
            [(op, ins, outs) for op, ins, outs, _ in self._nodes], set(consts), ("Add",))

    def _decayed(self, i: int, node: _Node, env: dict[str, Tensor]) -> _Node:
        # A residual branch's input to its Add goes through gradient_decay.decay (a no-op
        # unless a transfer attack asked for it).
        k = self._branches.get(i)
        if k is None:
            return node
        alias = f"__branch_{i}"
        env[alias] = decay(env[node[1][k]])
        ins = list(node[1])
        ins[k] = alias
        return (node[0], ins, node[2], node[3])

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"expected {len(self.input_names)} input(s), got {len(inputs)}")
        env: dict[str, Tensor] = dict(self._host_consts)
        env.update((name, getattr(self, buf)) for name, buf in self._const_names.items())
        env.update(zip(self.input_names, inputs, strict=True))
        decaying = current_gamma() != 1.0
        for i, (node, release) in enumerate(zip(self._nodes, self._release, strict=True)):
            if decaying:
                node = self._decayed(i, node, env)
            for name, value in zip(node[2], _run_node(node, env, self.source), strict=False):
                if name:
                    env[name] = value
            for name in release:
                if name not in self._const_names and name not in self._host_consts:
                    env.pop(name, None)
        out = tuple(env[n] for n in self.output_names)
        return out[0] if len(out) == 1 else out


def load_onnx(path: Path | str) -> onnx.ModelProto:
    """Read an ONNX file, with typed errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelMissingError(f"{path.name}: model file not found at {path}.")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf raises several unrelated types on a corrupt file
        raise ModelIntegrityError(f"{path.name}: not a readable ONNX model ({exc}).") from exc


def drop_unused_inputs(model: onnx.ModelProto) -> list[str]:
    """Remove graph inputs that no node reads (in place); returns their names.

    Some exporters list every weight as a graph input and then replace the weights with
    quantised copies: the originals stay declared as inputs that nothing uses, and onnxruntime
    then refuses to run without them (OpenCV Zoo's int8 SFace is one).
    """
    read = {name for node in model.graph.node for name in node.input}
    read |= {o.name for o in model.graph.output}
    unused = [v.name for v in model.graph.input if v.name not in read]
    if unused:
        keep = [v for v in model.graph.input if v.name in read]
        del model.graph.input[:]
        model.graph.input.extend(keep)
    return unused


def onnx_to_torch(path: Path | str) -> OnnxModule:
    """Convert the ONNX file at ``path`` into an :class:`OnnxModule` in eval mode (float32)."""
    module = OnnxModule(load_onnx(path), source=str(path))
    return module.eval()
