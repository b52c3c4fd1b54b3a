"""Rewrites of a converted ONNX graph's node list into single torch ops, for speed.

Exporters spell LayerNorm and exact GELU as chains of elementwise nodes (ReduceMean, Sub, Pow,
ReduceMean, Add, Sqrt, Div, Mul, Add; Div, Erf, Add, Mul, Mul). Run node by node, each link is a
full pass over the activations forward and another backward; EdgeFace-S has 26 such norms and
18 GELUs. ``F.layer_norm`` and ``F.gelu`` compute the same functions (up to float rounding) in
one kernel each way. A chain is fused only when every intermediate is read by the chain alone
and is not a graph output, and the constants are the ones the formula needs; anything else is
left as it is.

Nodes are ``(op, input names, output names, attributes)`` as :mod:`onnx_to_torch` keeps them;
``consts`` maps constant names to tensors. The fused node takes the place of the chain's last
node (its inputs are computed before the chain's first node), so the list stays topological.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Node = tuple[str, list[str], list[str], dict[str, Any]]

LAYER_NORM, GELU = "dladiff.LayerNorm", "dladiff.Gelu"


def _layer_norm(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    inp, w, b = x[0], x[1] if len(x) > 1 else None, x[2] if len(x) > 2 else None
    assert inp is not None
    c = inp.shape[-1]
    return F.layer_norm(inp, (c,), None if w is None else w.reshape(c),
                        None if b is None else b.reshape(c), float(a["epsilon"]))


def _gelu(x: list[Tensor | None], a: dict[str, Any]) -> Tensor:
    assert x[0] is not None
    return F.gelu(x[0])


FUSED_OPS = {LAYER_NORM: _layer_norm, GELU: _gelu}


class _Graph:
    """Who produces and who reads every name of a node list."""

    def __init__(self, nodes: Sequence[Node], consts: dict[str, Tensor], outputs: set[str]):
        self.nodes, self.consts, self.outputs = nodes, consts, outputs
        self.readers: dict[str, list[int]] = {}
        for i, (_, ins, _, _) in enumerate(nodes):
            for name in ins:
                if name:
                    self.readers.setdefault(name, []).append(i)

    def only_reader(self, name: str, op: str) -> int | None:
        """The one node that reads ``name``, if it is an ``op`` and ``name`` is internal."""
        r = self.readers.get(name, [])
        if len(r) != 1 or name in self.outputs or self.nodes[r[0]][0] != op:
            return None
        return r[0]

    def scalar(self, name: str) -> float | None:
        t = self.consts.get(name)
        if t is None or t.numel() != 1 or not t.is_floating_point():
            return None
        return float(t.reshape(()))

    def other(self, i: int, name: str) -> str | None:
        """The input of binary node ``i`` that is not ``name`` (None if both or neither)."""
        ins = self.nodes[i][1]
        if len(ins) != 2 or ins.count(name) != 1:
            return None
        return ins[1] if ins[0] == name else ins[0]

    def last_axis(self, i: int) -> bool:
        """Node ``i`` is a ReduceMean over the last axis that keeps it."""
        _, ins, _, attrs = self.nodes[i]
        axes = attrs.get("axes")
        if axes is None and len(ins) > 1 and ins[1] in self.consts:
            axes = [int(v) for v in self.consts[ins[1]].reshape(-1).tolist()]
        return list(axes or []) == [-1] and bool(attrs.get("keepdims", 1))

    def per_channel(self, name: str, op: str) -> tuple[int, str] | None:
        """(index, constant) of the one ``op`` node reading ``name`` with a float constant of
        one value per channel (last axis) as its other input."""
        i = self.only_reader(name, op)
        c = None if i is None else self.other(i, name)
        t = None if c is None else self.consts.get(c)
        if i is None or c is None or t is None or not t.is_floating_point() \
                or t.numel() != t.shape[-1]:
            return None
        return i, c


def _match_layer_norm(g: _Graph, i: int) -> tuple[list[int], Node] | None:
    """The chain starting at ReduceMean node ``i``: (its node indices, the fused node)."""
    _, ins, outs, _ = g.nodes[i]
    if not g.last_axis(i):
        return None
    x, mean = ins[0], outs[0]
    sub = g.only_reader(mean, "Sub")
    if sub is None or g.nodes[sub][1] != [x, mean]:
        return None
    d = g.nodes[sub][2][0]
    readers = g.readers.get(d, [])
    if len(readers) != 2 or d in g.outputs:
        return None
    ops = {g.nodes[r][0]: r for r in readers}
    pow_, div = ops.get("Pow"), ops.get("Div")
    if pow_ is None or div is None or g.nodes[pow_][1][0] != d \
            or g.scalar(g.nodes[pow_][1][1]) != 2.0 or g.nodes[div][1][0] != d:
        return None
    var = g.only_reader(g.nodes[pow_][2][0], "ReduceMean")
    if var is None or not g.last_axis(var):
        return None
    add = g.only_reader(g.nodes[var][2][0], "Add")
    eps = None if add is None else g.scalar(g.other(add, g.nodes[var][2][0]) or "")
    if add is None or eps is None:
        return None
    sqrt = g.only_reader(g.nodes[add][2][0], "Sqrt")
    if sqrt is None or g.only_reader(g.nodes[sqrt][2][0], "Div") != div \
            or g.nodes[div][1] != [d, g.nodes[sqrt][2][0]]:
        return None
    chain = [i, sub, pow_, var, add, sqrt, div]
    out, weight, bias = g.nodes[div][2][0], "", ""
    # The affine part, when there is one: times a weight, then plus a bias (per channel).
    scaled = g.per_channel(out, "Mul")
    if scaled is not None:
        chain.append(scaled[0])
        out, weight = g.nodes[scaled[0]][2][0], scaled[1]
        shifted = g.per_channel(out, "Add")
        if shifted is not None:
            chain.append(shifted[0])
            out, bias = g.nodes[shifted[0]][2][0], shifted[1]
    return chain, (LAYER_NORM, [x, weight, bias], [out], {"epsilon": eps})


def _match_gelu(g: _Graph, i: int) -> tuple[list[int], Node] | None:
    """``x * 0.5 * (1 + erf(x / sqrt(2)))`` whose Div is node ``i``."""
    _, ins, outs, _ = g.nodes[i]
    if len(ins) != 2 or not math.isclose(g.scalar(ins[1]) or 0.0, math.sqrt(2.0),
                                         rel_tol=1e-6):
        return None
    x = ins[0]
    erf = g.only_reader(outs[0], "Erf")
    add = None if erf is None else g.only_reader(g.nodes[erf][2][0], "Add")
    if erf is None or add is None \
            or g.scalar(g.other(add, g.nodes[erf][2][0]) or "") != 1.0:
        return None
    mul = g.only_reader(g.nodes[add][2][0], "Mul")
    if mul is None or g.other(mul, g.nodes[add][2][0]) != x:
        return None
    half = g.only_reader(g.nodes[mul][2][0], "Mul")
    if half is None or g.scalar(g.other(half, g.nodes[mul][2][0]) or "") != 0.5:
        return None
    return [i, erf, add, mul, half], (GELU, [x], [g.nodes[half][2][0]], {})


def fuse(nodes: list[Node], consts: dict[str, Tensor], outputs: set[str]) -> list[Node]:
    """``nodes`` with every LayerNorm and exact-GELU chain replaced by one fused node."""
    g = _Graph(nodes, consts, outputs)
    replace: dict[int, Node] = {}
    drop: set[int] = set()
    for i, (op, _, _, _) in enumerate(nodes):
        if i in drop:
            continue
        found = (_match_layer_norm(g, i) if op == "ReduceMean"
                 else _match_gelu(g, i) if op == "Div" else None)
        if found is None or drop.intersection(found[0]):
            continue
        chain, node = found
        last = max(chain)
        drop.update(chain)
        replace[last] = node
    return [replace.get(i, n) for i, n in enumerate(nodes) if i not in drop or i in replace]
