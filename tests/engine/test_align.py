"""The differentiable warp reproduces insightface's norm_crop on a real photo."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from dladiff_app.engine.faces.align import (
    ARCFACE_TEMPLATE_112,
    antialias_sigma,
    antialiased_warps,
    estimate_similarity,
    gaussian_blur,
    norm_crop_matrix,
    transform_points,
    warp_affine,
    warp_antialias_factor,
)


def _t1_bgr() -> np.ndarray:
    import cv2

    spec = importlib.util.find_spec("insightface")
    assert spec is not None and spec.origin is not None
    img = cv2.imread(str(Path(spec.origin).parent / "data" / "images" / "t1.jpg"))
    assert img is not None
    return img


def _landmarks(scale: float, angle_deg: float, centre: tuple[float, float]) -> np.ndarray:
    """Plausible 5-point landmarks: the template rotated, scaled and placed in the photo."""
    th = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    jitter = np.random.default_rng(1).normal(0, 1.0, (5, 2))
    pts = (ARCFACE_TEMPLATE_112 - 56.0) @ rot.T * scale + np.asarray(centre) + jitter
    return pts.astype(np.float32)


def test_similarity_recovers_a_known_transform() -> None:
    src = np.random.default_rng(0).uniform(0, 200, (5, 2))
    th = 0.3
    true = np.array([[2 * np.cos(th), -2 * np.sin(th), 10.0], [2 * np.sin(th), 2 * np.cos(th), -4.0]])
    est = estimate_similarity(src, transform_points(src, true))
    np.testing.assert_allclose(est, true, atol=1e-9)


@pytest.mark.parametrize(
    ("scale", "angle", "centre"),
    [(3.0, 10.0, (500.0, 250.0)), (1.3, -5.0, (300.0, 300.0)), (0.8, 0.0, (60.0, 40.0))],
)
def test_warp_matches_norm_crop(scale: float, angle: float, centre: tuple[float, float]) -> None:
    from insightface.utils import face_align

    img = _t1_bgr()
    lm = _landmarks(scale, angle, centre)
    ref = face_align.norm_crop(img, lm).astype(np.float64)  # uint8 BGR, cv2.warpAffine
    np.testing.assert_allclose(norm_crop_matrix(lm), face_align.estimate_norm(lm), atol=1e-3)
    t = torch.from_numpy(img[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255.0
    ours = warp_affine(t, norm_crop_matrix(lm), 112)[0].permute(1, 2, 0).numpy()[:, :, ::-1] * 255
    diff = np.abs(ours - ref)
    # cv2 rounds to uint8 (<= 0.5) and quantises coordinates to 1/32 px.
    assert diff.mean() < 1.0, f"mean |ours - norm_crop| = {diff.mean():.3f} (0-255)"
    assert diff.max() <= 2.0, f"max |ours - norm_crop| = {diff.max():.3f} (0-255)"


def test_warp_is_differentiable_and_local() -> None:
    img = torch.rand(1, 3, 400, 600, requires_grad=True)
    lm = _landmarks(1.5, 0.0, (450.0, 200.0))
    out = warp_affine(img, norm_crop_matrix(lm), 112)
    out.sum().backward()
    g = img.grad
    assert g is not None and torch.isfinite(g).all()
    assert g[..., 150:250, 400:500].abs().sum() > 0
    assert g[..., :, :200].abs().sum() == 0  # far from the face: no influence


def test_antialias_smooths_a_strong_downscale() -> None:
    # A one-pixel checkerboard shrunk 6x: plain bilinear aliases into a high-contrast pattern,
    # the pre-blurred warp returns close to its mean grey.
    yy, xx = np.mgrid[:800, :800]
    board = torch.from_numpy(((xx + yy) % 2).astype(np.float32))[None, None].expand(1, 3, -1, -1)
    m = np.array([[1 / 6.0, 0.0, 0.0], [0.0, 1 / 6.0, 0.0]])
    plain = warp_affine(board, m, 112)
    smooth = warp_affine(board, m, 112, antialias=True)[..., 2:-2, 2:-2]  # away from the edge
    assert (smooth - 0.5).abs().max() < 0.05 < (plain - 0.5).abs().max()


def test_crop_outside_the_photo_is_black_and_connected() -> None:
    img = torch.rand(1, 3, 50, 50, requires_grad=True)
    m = np.array([[1.0, 0.0, -500.0], [0.0, 1.0, -500.0]])
    out = warp_affine(img, m, 16)
    assert out.shape == (1, 3, 16, 16) and out.abs().sum() == 0
    out.sum().backward()


def test_antialiased_warps_sets_this_threads_default() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.rand((1, 3, 300, 300), generator=g)
    m = np.array([[0.3, 0.01, 2.0], [-0.01, 0.3, 1.0]])
    plain = warp_affine(img, m, 64)
    with antialiased_warps(1.0):
        assert warp_antialias_factor() == 1.0
        assert torch.equal(warp_affine(img, m, 64), warp_affine(img, m, 64, antialias=True))
        with antialiased_warps(0.0):
            assert torch.equal(warp_affine(img, m, 64), plain)
        seen: list[float] = []
        worker = threading.Thread(target=lambda: seen.append(warp_antialias_factor()))
        worker.start()
        worker.join()
        assert seen == [0.0]  # another thread's warps are its own business
        with antialiased_warps(2.0):
            # A stronger pre-blur leaves less of the noise: a smaller spread around the mean.
            assert float(warp_affine(img, m, 64)[..., 4:-4, 4:-4].std()) < \
                float(warp_affine(img, m, 64, antialias=True)[..., 4:-4, 4:-4].std())
    assert warp_antialias_factor() == 0.0
    assert torch.equal(warp_affine(img, m, 64), plain)
    with pytest.raises(ValueError), antialiased_warps(-1.0):
        pass


def test_pooled_antialias_matches_a_gaussian_pre_blur() -> None:
    # A 3.3x shrink is done as a 3x3 box average and a Gaussian on the pooled crop; on a real
    # photo it must sample what the plain Gaussian of the same sigma would.
    from skimage import data

    img = torch.from_numpy(data.astronaut().astype(np.float32) / 255).permute(2, 0, 1)[None]
    a = 0.3 * np.array([[np.cos(0.2), np.sin(0.2)], [-np.sin(0.2), np.cos(0.2)]])
    m = np.hstack([a, (56.0 - a @ [256.0, 256.0])[:, None]])  # the photo's centre, all inside
    with antialiased_warps(2.0):
        pooled = warp_affine(img, m, 112)
        sigma = 2.0 * antialias_sigma(m)
    reference = warp_affine(gaussian_blur(img, sigma), m, 112)
    plain = warp_affine(img, m, 112)
    inner = (..., slice(4, -4), slice(4, -4))
    assert float((pooled - reference)[inner].abs().mean()) < 0.25 * float(
        (plain - reference)[inner].abs().mean())
    assert float((pooled - reference)[inner].abs().max()) < 0.08  # box vs Gaussian, at edges


def test_antialiased_warp_of_a_sliver_at_the_edge() -> None:
    img = torch.rand(1, 3, 200, 200, requires_grad=True)
    m = np.array([[0.25, 0.0, 110.0], [0.0, 0.25, 20.0]])  # all but 2 source columns off-photo
    out = warp_affine(img, m, 32, antialias=True)
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()
    out.sum().backward()
    assert img.grad is not None and torch.isfinite(img.grad).all()
