"""Gradient decay at an encoder's nonlinearities, for attacks that must transfer.

Inside :func:`residual_gradient_decay` (``gamma`` < 1), the backward pass through every
nonlinearity of a face encoder's residual branches is multiplied by ``gamma``; the forward pass
is untouched. In a residual network the gradient then favours the skip connections, the paths
that most networks of a family share (the "skip gradient method" of Wu et al., ICLR 2020,
which made ImageNet attacks transfer better between ResNets). Encoders call :func:`decay` on
their activations; outside the context it returns its input as is (no autograd node: the
normal forward and backward are bit for bit what they were).

The setting is per thread: a shield running on a worker thread does not change a measurement
on another.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

_state = threading.local()


class _Decay(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, gamma: float) -> torch.Tensor:  # type: ignore[override]
        ctx.gamma = gamma
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.gamma, None


def current_gamma() -> float:
    return float(getattr(_state, "gamma", 1.0))


def decay(x: torch.Tensor) -> torch.Tensor:
    """``x`` (any shape), with its gradient multiplied by the current gamma in backward."""
    gamma = current_gamma()
    if gamma == 1.0 or not x.requires_grad:
        return x
    return _Decay.apply(x, gamma)


@contextmanager
def residual_gradient_decay(gamma: float) -> Iterator[None]:
    """Within the block, :func:`decay` scales gradients by ``gamma`` (in (0, 1]) on this
    thread."""
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    before = current_gamma()
    _state.gamma = float(gamma)
    try:
        yield
    finally:
        _state.gamma = before


def residual_branches(nodes: Sequence[tuple[str, Sequence[str], Sequence[str]]],
                      constants: set[str], add_ops: tuple[str, ...],
                      reach: int = 256) -> dict[int, int]:
    """The residual additions of a graph given as ``(op, input names, output names)`` in
    execution order: ``{node index: index of its branch input}`` for every addition of two
    computed tensors where one is an ancestor of the other within ``reach`` nodes (that one is
    the skip connection, the other the branch)."""
    producer = {out: i for i, (_, _, outs) in enumerate(nodes) for out in outs}

    def ancestor(a: str, b: str) -> bool:
        seen: set[int] = set()
        todo = [b]
        while todo and len(seen) < reach:
            name = todo.pop()
            if name == a:
                return True
            j = producer.get(name)
            if j is None or j in seen:
                continue
            seen.add(j)
            todo.extend(nodes[j][1])
        return False

    out = {}
    for i, (op, ins, _) in enumerate(nodes):
        if op not in add_ops or len(ins) != 2 or any(n in constants for n in ins):
            continue
        if ancestor(ins[0], ins[1]):
            out[i] = 1
        elif ancestor(ins[1], ins[0]):
            out[i] = 0
    return out
