"""The one optimiser loop (engine.shield.driver) on small known problems: budget box, sign
step and momentum arithmetic, phases and term weights, cancel, progress, and no host sync."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import Cancelled
from dladiff_app.engine.shield.driver import (
    Ball,
    Box,
    Constant,
    CosineDecay,
    Driver,
    Phase,
    grid_box,
)


class Quadratic:
    """``0.5 * sum(w * (x - centre)^2)``: gradient ``w * (x - centre)``, loss as a tensor."""

    def __init__(self, name: str, centre: torch.Tensor, report_loss: bool = True) -> None:
        self.name, self.centre, self.report_loss = name, centre, report_loss
        self.calls = 0

    def gradients(self, xs: Sequence[torch.Tensor], step: int
                  ) -> tuple[list[torch.Tensor | None], torch.Tensor | None]:
        self.calls += 1
        grads: list[torch.Tensor | None] = [x - self.centre for x in xs]
        loss = 0.5 * sum(((x - self.centre) ** 2).sum() for x in xs) if self.report_loss \
            else None
        return grads, loss  # type: ignore[return-value]


class Scripted:
    """Returns the given gradients, one list per step."""

    def __init__(self, name: str, steps: list[list[torch.Tensor | None]]) -> None:
        self.name, self.steps, self.calls = name, steps, 0

    def gradients(self, xs: Sequence[torch.Tensor], step: int
                  ) -> tuple[list[torch.Tensor | None], None]:
        self.calls += 1
        return self.steps[step], None


def _wide(x: torch.Tensor) -> Box:
    return Box(torch.full_like(x, -100.0), torch.full_like(x, 100.0))


def test_sign_step_moves_alpha_against_the_gradient_sign() -> None:
    x = torch.tensor([0.0, 1.0, 2.0, 3.0])
    term = Quadratic("q", torch.tensor([1.0, 1.0, 1.0, 1.0]))
    driver = Driver([x], [_wide(x)], [term], Constant(0.25))
    driver.run([Phase(1, {"q": 1.0})])
    # gradient (-1, 0, 1, 2): sign (-1, 0, 1, 1)
    assert torch.equal(driver.xs[0], torch.tensor([0.25, 1.0, 1.75, 2.75]))
    # A negative weight maximises: the same step the other way.
    up = Driver([x], [_wide(x)], [term], Constant(0.25))
    up.run([Phase(1, {"q": -2.0})])
    assert torch.equal(up.xs[0], torch.tensor([-0.25, 1.0, 2.25, 3.25]))


def test_cosine_steps_settle_on_the_quadratic_minimum() -> None:
    gen = torch.Generator().manual_seed(0)
    centre = torch.rand(50, generator=gen)
    x = torch.rand(50, generator=gen)
    sched = CosineDecay(peak=0.1, floor=0.001)
    assert sched.at(0, 40) == pytest.approx(0.1) and sched.at(39, 40) == pytest.approx(0.001)
    driver = Driver([x], [_wide(x)], [Quadratic("q", centre)], sched, momentum=0.75)
    (res,) = driver.run([Phase(40, {"q": 1.0})])
    assert float((driver.xs[0] - centre).abs().max()) < 0.01
    assert len(res.losses["q"]) == 40 and res.losses["q"][-1] < res.losses["q"][0] / 100


def test_momentum_is_l1_normalised_accumulation_and_its_sign_steps() -> None:
    x = torch.zeros(2)
    g1, g2 = torch.tensor([1.0, -3.0]), torch.tensor([-1.0, 1.0])
    term = Scripted("s", [[g1], [g2]])
    driver = Driver([x], [_wide(x)], [term], Constant(1.0), momentum=0.75)
    driver.run([Phase(1, {"s": 1.0})])
    # v1 = g1 / mean|g1| = (0.5, -1.5): x moves against its sign.
    assert torch.equal(driver.velocity[0], torch.tensor([0.5, -1.5]))
    assert torch.equal(driver.xs[0], torch.tensor([-1.0, 1.0]))
    driver.run([Phase(1, {"s": 1.0})])
    # v2 = 0.75 v1 + g2 / mean|g2| = (-0.625, -0.125): both move up, though g2's second
    # component alone would have moved it down.
    assert torch.equal(driver.velocity[0], torch.tensor([-0.625, -0.125]))
    assert torch.equal(driver.xs[0], torch.tensor([0.0, 2.0]))


def test_steps_stay_inside_the_8_bit_grid_box_and_a_step_mask_scales_them() -> None:
    gen = torch.Generator().manual_seed(1)
    clean = torch.round(torch.rand(1, 3, 8, 8, generator=gen) * 255) / 255
    eps = 4 / 255
    box = grid_box(clean, eps)
    steps = [[torch.randn(1, 3, 8, 8, generator=gen)] for _ in range(30)]
    driver = Driver([clean], [box], [Scripted("s", steps)], Constant(3 / 255), momentum=0.5)
    driver.run([Phase(30, {"s": 1.0})])
    x = driver.xs[0]
    assert bool((x >= box.lo).all()) and bool((x <= box.hi).all())
    assert float((x - clean).abs().max()) <= eps + 1e-7
    # Rounded to the file's grid it is still inside the budget (the grid box's point).
    assert float((torch.round(x * 255) / 255 - clean).abs().max()) <= eps + 1e-7
    # A half mask halves every step; a zero mask freezes the pixel.
    mask = torch.tensor([0.5, 0.0, 1.0])
    v = torch.zeros(3)
    masked = Driver([v], [Box(v - 1, v + 1, step_mask=mask)],
                    [Scripted("s", [[torch.tensor([1.0, 1.0, -1.0])]])], Constant(0.5))
    masked.run([Phase(1, {"s": 1.0})])
    assert torch.equal(masked.xs[0], torch.tensor([-0.25, 0.0, 0.5]))
    # The plain ball (layer 1's) clamps to [0, 1] as well.
    ball = Ball(torch.tensor([0.01, 0.99]), 0.05)
    lo, hi = ball.bounds()
    assert torch.allclose(lo, torch.tensor([0.0, 0.94])) and torch.allclose(
        hi, torch.tensor([0.06, 1.0]))


def test_phases_respect_term_weights_and_never_evaluate_a_zero_weight_term() -> None:
    x = torch.zeros(2)
    a = Quadratic("a", torch.ones(2))
    b = Quadratic("b", -torch.ones(2))
    driver = Driver([x], [_wide(x)], [a, b], Constant(0.1))
    results = driver.run([Phase(2, {"a": 1.0}), Phase(3, {"a": 1.0, "b": 0.0}),
                          Phase(1, {"b": -1.0})])
    assert (a.calls, b.calls) == (5, 1)
    assert [sorted(r.losses) for r in results] == [["a"], ["a"], ["b"]]
    assert [r.steps for r in results] == [2, 3, 1]
    # Five steps towards a's centre (+0.5), one away from b's (also up, +0.1).
    assert torch.allclose(driver.xs[0], torch.full((2,), 0.6))
    with pytest.raises(ValueError, match="unknown terms"):
        driver.run([Phase(1, {"c": 1.0})])


def test_several_terms_are_each_normalised_before_the_sign() -> None:
    x = torch.zeros(2)
    big = Scripted("big", [[torch.tensor([10.0, 10.0])]])
    small = Scripted("small", [[torch.tensor([-0.1, -0.3])]])
    driver = Driver([x], [_wide(x)], [big, small], Constant(1.0))
    driver.run([Phase(1, {"big": 1.0, "small": 1.0})])
    # Raw sum (9.9, 9.7) would step both down; normalised (1, 1) + (-0.5, -1.5) = (0.5, -0.5).
    assert torch.equal(driver.xs[0], torch.tensor([-1.0, 1.0]))
    # A term that does not reach a variable (None) leaves the other term's direction, and a
    # variable no term reaches does not move.
    y = torch.zeros(2)
    partial = Driver([x, y], [_wide(x), _wide(y)],
                     [Scripted("p", [[torch.tensor([1.0, -1.0]), None]]),
                      Scripted("q", [[None, None]])], Constant(1.0))
    partial.run([Phase(1, {"p": 1.0, "q": 1.0})])
    assert torch.equal(partial.xs[0], torch.tensor([-1.0, 1.0]))
    assert torch.equal(partial.xs[1], y)


def test_cancel_raises_before_a_step_and_progress_counts_every_step() -> None:
    x = torch.zeros(3)
    term = Quadratic("q", torch.ones(3))
    seen: list[tuple[int, int]] = []
    driver = Driver([x], [_wide(x)], [term], Constant(0.1),
                    progress=lambda d, t: seen.append((d, t)))
    driver.run([Phase(2, {"q": 1.0}), Phase(3, {"q": 1.0})])
    assert seen == [(i, 5) for i in range(1, 6)]

    token = CancelToken()

    def progress(done: int, total: int) -> None:
        if done == 2:
            token.cancel()

    term2 = Quadratic("q", torch.ones(3))
    cancelled = Driver([x], [_wide(x)], [term2], Constant(0.1), cancel=token,
                       progress=progress)
    with pytest.raises(Cancelled):
        cancelled.run([Phase(5, {"q": 1.0})])
    assert term2.calls == 2 and cancelled.done == 2


def test_phase_hooks_see_the_variables_and_the_losses_read_once() -> None:
    x = torch.zeros(2)
    term = Quadratic("q", torch.ones(2))
    seen: list[tuple[list[float], torch.Tensor]] = []
    driver = Driver([x], [_wide(x)], [term], Constant(0.25))
    driver.run([Phase(2, {"q": 1.0}, after=lambda d, r: seen.append((r.losses["q"],
                                                                      d.xs[0].clone())))])
    losses, at_end = seen[0]
    assert losses == [1.0, 0.5625]  # 0.5 * 2 * 1^2, then 0.5 * 2 * 0.75^2
    assert torch.equal(at_end, torch.full((2,), 0.5))


@pytest.mark.gpu_readiness
def test_steps_run_on_the_meta_device() -> None:
    """A meta tensor has no values: any read-back in a step would raise."""
    x = torch.zeros(1, 3, 4, 4, device="meta")
    box = Box(x - 1, x + 1, step_mask=torch.ones(1, 1, 4, 4, device="meta"))
    terms = [Quadratic("a", torch.ones(1, 3, 4, 4, device="meta"), report_loss=False),
             Quadratic("b", torch.zeros(1, 3, 4, 4, device="meta"), report_loss=False)]
    driver = Driver([x], [box], terms, CosineDecay(0.1, 0.01), momentum=0.75)
    driver.run([Phase(2, {"a": 1.0}), Phase(2, {"a": 1.0, "b": -0.5})])
    assert driver.done == 4 and driver.xs[0].device.type == "meta"


@pytest.mark.gpu_readiness
def test_no_value_is_read_back_during_the_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("host read-back inside a step")

    x = torch.rand(1, 3, 4, 4)
    terms = [Quadratic("a", torch.ones(1, 3, 4, 4)), Quadratic("b", torch.zeros(1, 3, 4, 4))]
    driver = Driver([x], [_wide(x)], terms, Constant(0.1), momentum=0.75)
    reads = []
    real_tolist = torch.Tensor.tolist

    def tolist_once(self: torch.Tensor) -> Any:
        reads.append(self.shape)
        return real_tolist(self)

    for name in ("item", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    monkeypatch.setattr(torch.Tensor, "tolist", tolist_once)
    (res,) = driver.run([Phase(3, {"a": 1.0, "b": -1.0})])
    monkeypatch.undo()
    # Read once at the end of the phase: one stacked tensor per term.
    assert reads == [torch.Size([3]), torch.Size([3])]
    assert len(res.losses["a"]) == 3
