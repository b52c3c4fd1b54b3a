"""The one optimiser loop of both shields: signed gradient steps on several variables inside a
per-pixel budget box, driven by pluggable loss terms (METHOD.md; layer 1, layer 2 and the
polish are schedules of it).

Per step, in this order: ``cancel.check()``; every term with a non-zero weight in the phase
gives its gradient for each variable; the gradients are combined (one term: its gradient times
its weight; several: each divided by its own mean absolute value first, so that the sign of the
sum is not just the sign of the larger loss); optionally MI-FGSM momentum (L1-normalised
gradients accumulate, the sum's sign steps); the step ``x - alpha * sign(d)`` (times a per-pixel
step mask where one is given) is clamped to the variable's box; ``progress(done, total)``.

The driver *descends*: a term to be maximised gets a negative weight. Nothing in a step reads a
value back to the host: step sizes are Python floats computed from the step index, norms stay
0-d tensors on the variables' device, and the terms' losses are kept as device tensors and read
once at the end of a phase.

Tensor contract: every variable is a float tensor of any shape (in practice (3, H, W) or
(1, 3, H, W) RGB in [0, 1]) on its own device; its box bounds, step mask and gradients have its
shape, dtype and device.

Bit-for-bit choices (the refactor kept every CPU result identical): the momentum update is one
fused ``addcmul`` with the factor rounded to float32 from a float64 ratio, exactly what the
former ``add_(grad, alpha=python_float)`` computed. float64 only on the CPU: an accelerator
takes the ratio in float32 (``device.accumulate_dtype``; MPS has no float64).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from dladiff_app.engine.device import accumulate_dtype
from dladiff_app.engine.shield.pgd import ball_bounds, grid_bounds


class Cancel(Protocol):
    def check(self) -> None: ...


class Term(Protocol):
    """One loss of the objective. ``gradients(xs, step)`` returns, for each variable, the
    gradient of the term's loss with respect to it (None where the term does not reach that
    variable), and the loss as a detached 0-d tensor (or None); it must not read values back
    to the host. ``step`` counts the run's steps from 0."""

    name: str

    def gradients(self, xs: Sequence[torch.Tensor], step: int
                  ) -> tuple[list[torch.Tensor | None], torch.Tensor | None]: ...


@dataclass(frozen=True)
class Box:
    """The budget of one variable: ``lo <= x <= hi`` elementwise, and ``step_mask`` (or None)
    multiplying every step (layer 2's feathered blend)."""

    lo: torch.Tensor
    hi: torch.Tensor
    step_mask: torch.Tensor | None = None

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lo, self.hi


@dataclass(frozen=True)
class Ball:
    """The L-inf ball of radius ``eps`` around ``clean`` intersected with [0, 1], bounds
    computed at each step rather than stored (layer 1's album may be larger than spare
    memory allows two more copies of)."""

    clean: torch.Tensor
    eps: float
    step_mask: None = None

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        return ball_bounds(self.clean, self.eps)


def grid_box(clean: torch.Tensor, eps: float | torch.Tensor) -> Box:
    """The 8-bit-grid budget box (:func:`pgd.grid_bounds`) around ``clean``."""
    return Box(*grid_bounds(clean, eps))


@dataclass(frozen=True)
class Constant:
    """The same step size ``alpha`` (pixel units) at every step."""

    alpha: float

    def at(self, step: int, total: int) -> float:
        return self.alpha


@dataclass(frozen=True)
class CosineDecay:
    """Cosine decay from ``peak`` to ``floor`` over the run's steps: big steps find the
    direction, small ones settle on the 8-bit grid."""

    peak: float
    floor: float

    def at(self, step: int, total: int) -> float:
        t = step / max(1, total - 1)
        return self.floor + 0.5 * (self.peak - self.floor) * (1.0 + math.cos(math.pi * t))


class Schedule(Protocol):
    def at(self, step: int, total: int) -> float: ...


@dataclass
class PhaseResult:
    """What one phase did: ``losses[term]`` one float per step (read once, at the end),
    ``seconds`` its wall time including that read."""

    steps: int
    losses: dict[str, list[float]]
    seconds: float


@dataclass
class Phase:
    """``steps`` steps with ``weights`` (term name -> weight; terms not named are off and
    never evaluated). ``after(driver, result)`` runs when the phase ends (ADFT's LoRA updates
    between PGD rounds)."""

    steps: int
    weights: Mapping[str, float]
    after: Callable[[Driver, PhaseResult], None] | None = None


def normalised(grad: torch.Tensor) -> torch.Tensor:
    """``grad`` divided by its mean absolute value (unchanged where that is 0), on the device."""
    scale = grad.abs().mean()
    return torch.where(scale > 0, grad / scale, grad)


def combine(parts: Sequence[tuple[float, torch.Tensor | None]]) -> torch.Tensor | None:
    """The descent direction of weighted gradients of one variable: one gradient times its
    weight, or the weighted sum of the normalised gradients when several terms are on (None
    when no term reached the variable)."""
    if len(parts) == 1:
        weight, grad = parts[0]
        return grad if grad is None or weight == 1.0 else weight * grad
    direction: torch.Tensor | None = None
    for weight, grad in parts:
        if grad is None:
            continue
        g = normalised(grad)
        g = g if weight == 1.0 else weight * g
        direction = g if direction is None else direction + g
    return direction


class Driver:
    """Signed-gradient descent on ``xs`` inside ``boxes`` (one per variable), with ``terms``
    by name and the step size ``schedule`` over the whole run. ``momentum``: None, or the
    MI-FGSM decay (layer 2's ``ShieldOptions.momentum``). ``progress(done, total)`` after
    every step, counted over all phases of :meth:`run`."""

    def __init__(self, xs: Sequence[torch.Tensor], boxes: Sequence[Box | Ball],
                 terms: Sequence[Term], schedule: Schedule, *, momentum: float | None = None,
                 cancel: Cancel | None = None,
                 progress: Callable[[int, int], None] | None = None) -> None:
        if len(xs) != len(boxes):
            raise ValueError(f"{len(xs)} variables but {len(boxes)} boxes")
        self.xs = [x.detach() for x in xs]
        self.boxes = list(boxes)
        self.terms = {t.name: t for t in terms}
        self.schedule = schedule
        self.momentum = momentum
        self.velocity = [torch.zeros_like(x) for x in self.xs] if momentum is not None else []
        self.cancel = cancel
        self.progress = progress
        self.done = 0

    def run(self, phases: Sequence[Phase]) -> list[PhaseResult]:
        """Run ``phases`` in order; returns what each did. The variables end in ``self.xs``."""
        for phase in phases:
            unknown = set(phase.weights) - set(self.terms)
            if unknown:
                raise ValueError(f"unknown terms {sorted(unknown)}; have {sorted(self.terms)}")
        total = self.done + sum(p.steps for p in phases)
        results = []
        for phase in phases:
            result = self._phase(phase, total)
            results.append(result)
            if phase.after is not None:
                phase.after(self, result)
        return results

    def _phase(self, phase: Phase, total: int) -> PhaseResult:
        started = time.perf_counter()
        active = [(self.terms[name], float(w)) for name, w in phase.weights.items() if w != 0.0]
        seen: dict[str, list[torch.Tensor]] = {term.name: [] for term, _ in active}
        for _ in range(phase.steps):
            if self.cancel is not None:
                self.cancel.check()
            per_term = []
            for term, weight in active:
                grads, loss = term.gradients(self.xs, self.done)
                if len(grads) != len(self.xs):
                    raise ValueError(f"term {term.name} gave {len(grads)} gradients for "
                                     f"{len(self.xs)} variables")
                per_term.append((weight, grads))
                if loss is not None:
                    seen[term.name].append(loss)
            alpha = self.schedule.at(self.done, total)
            for i in range(len(self.xs)):
                direction = combine([(w, grads[i]) for w, grads in per_term])
                if direction is not None:
                    self._step(i, direction, alpha)
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, total)
        # The one host synchronisation of a phase.
        losses = {name: [float(v) for v in torch.stack(values).tolist()]
                  for name, values in seen.items() if values}
        return PhaseResult(phase.steps, losses, time.perf_counter() - started)

    def _step(self, i: int, direction: torch.Tensor, alpha: float) -> None:
        x, box = self.xs[i], self.boxes[i]
        with torch.no_grad():
            if self.momentum is not None:
                # MI-FGSM: L1-normalised gradients accumulate, the sign of the sum steps.
                wide = accumulate_dtype(direction.device)
                l1 = torch.linalg.vector_norm(direction, ord=1).to(wide) / direction.numel()
                factor = (1.0 / torch.clamp(l1, min=1e-20)).to(direction.dtype)
                direction = torch.addcmul(self.velocity[i].mul_(self.momentum), direction,
                                          factor)
                self.velocity[i] = direction
            sign = direction.sign()
            moved = (torch.add(x, sign, alpha=-alpha) if box.step_mask is None
                     else torch.addcmul(x, sign, box.step_mask, value=-alpha))
            lo, hi = box.bounds()
            self.xs[i] = torch.clamp(moved, lo, hi)
