"""PGD helpers and the differentiable resize/center-crop (no model needed)."""

from __future__ import annotations

import torch

from dladiff_app.engine.shield import pgd
from dladiff_app.engine.shield.resize import to_working, working_geometry


def test_random_start_is_inside_budget_and_box_and_not_zero() -> None:
    clean = torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(0))
    clean[:, :5] = 0.0
    clean[:, -5:] = 1.0
    eps = 8 / 255
    start = pgd.random_start(clean, eps, torch.Generator().manual_seed(1))
    assert start.shape == clean.shape
    assert (start - clean).abs().max() <= eps + 1e-7
    assert start.min() >= 0 and start.max() <= 1
    assert (start != clean).float().mean() > 0.5  # not a zero start (METHOD.md pitfall)
    again = pgd.random_start(clean, eps, torch.Generator().manual_seed(1))
    assert torch.equal(start, again)


def test_project_respects_the_unit_box() -> None:
    clean = torch.tensor([0.0, 1.0, 0.98])
    out = pgd.project(torch.tensor([-0.5, 1.5, 1.2]), clean, 0.05)
    assert torch.allclose(out, torch.tensor([0.0, 1.0, 1.0]))
    assert abs(pgd.linf_255(out, clean) - 0.02 * 255) < 1e-4
    assert pgd.from_255(8) == 8 / 255


def test_working_geometry_matches_torchvision_rounding() -> None:
    # Resize(64) of 70x90 -> 64x82 (int(64*90/70) = 82), CenterCrop(64) -> top 0, left 9.
    assert working_geometry(70, 90, 64) == (64, 82, 0, 9)
    assert working_geometry(96, 64, 64) == (96, 64, 16, 0)
    assert working_geometry(512, 512, 512) == (512, 512, 0, 0)


def test_to_working_shape_and_gradient_reach_the_crop() -> None:
    x = torch.rand(3, 70, 90, requires_grad=True)
    out = to_working(x, 64)
    assert out.shape == (1, 3, 64, 64)
    out.sum().backward()
    assert x.grad is not None
    _, _, top, left = working_geometry(70, 90, 64)
    # Every column the crop covers gets gradient; columns far outside it get none.
    inner = x.grad[:, :, 14:75]
    assert (inner.abs().sum(dim=(0, 1)) > 0).all()
    assert x.grad[:, :, :5].abs().sum() == 0 and x.grad[:, :, -5:].abs().sum() == 0
    assert left == 9 and top == 0


def test_to_working_is_identity_at_working_size_and_upscales_small_photos() -> None:
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(to_working(x, 64), x)
    small = to_working(torch.rand(3, 40, 50), 64)
    assert small.shape == (1, 3, 64, 64)


def test_grid_bounds_keep_the_rounded_file_inside_the_budget() -> None:
    """Any point between the bounds, rounded to 8 bits as the file is written, stays within eps
    of an 8-bit clean photo and inside [0, 1]; the bounds themselves are on the grid."""
    gen = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 256, (3, 16, 16), generator=gen).float() / 255.0
    clean[0, 0, :4] = torch.tensor([0.0, 1 / 255, 254 / 255, 1.0])  # the box edges
    for k in (1, 4, 8, 12):
        eps = k / 255.0
        lo, hi = pgd.grid_bounds(clean, eps)
        for b in (lo, hi):
            assert torch.equal(torch.round(b * 255.0) / 255.0, b)
        assert (lo <= clean).all() and (clean <= hi).all()
        # The whole ball is reachable: the bounds are exactly clean -/+ eps, clipped to the box.
        assert torch.allclose(lo, (clean - eps).clamp(0, 1), atol=1e-6)
        assert torch.allclose(hi, (clean + eps).clamp(0, 1), atol=1e-6)
        t = torch.rand(clean.shape, generator=gen)
        written = pgd.quantise_ste(lo + t * (hi - lo))
        assert pgd.linf_255(written, clean) <= k + 1e-4
        assert written.min() >= 0 and written.max() <= 1


def test_grid_bounds_contain_an_off_grid_clean_photo() -> None:
    clean = torch.tensor([0.5 / 255, 100.4 / 255, 254.7 / 255])  # e.g. from a 16-bit file
    lo, hi = pgd.grid_bounds(clean, 2 / 255)
    assert (lo <= clean).all() and (clean <= hi).all()
    assert torch.allclose(lo * 255, torch.tensor([0.0, 99.0, 253.0]), atol=1e-4)
    assert torch.allclose(hi * 255, torch.tensor([2.0, 102.0, 255.0]), atol=1e-4)


def test_quantise_ste_rounds_forward_and_passes_the_gradient_through() -> None:
    x = torch.tensor([0.1, 0.50196, 0.9999], requires_grad=True)
    y = pgd.quantise_ste(x)
    assert torch.equal(y.detach(), torch.round(x.detach() * 255) / 255)
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.tensor([1.0, 2.0, 3.0]))
