"""PSNR / SSIM / L-inf against closed-form values and scikit-image; the sharing transform."""

from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.metrics as skimage_metrics  # the SSIM reference (a declared test dependency)

from dladiff_app.core.quality import linf_255, psnr, simulate_sharing, ssim
from tests.core.bad_files import sample_rgb


def _astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()  # (512, 512, 3) uint8, a real photo bundled with scikit-image


def _skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(skimage_metrics.structural_similarity(
        a, b, channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False))


def test_psnr_known_values():
    zeros = np.zeros((16, 16, 3))
    assert psnr(zeros, zeros + 0.1) == pytest.approx(20.0, abs=1e-9)
    half = zeros.copy()
    half[:8] = 0.1
    assert psnr(zeros, half) == pytest.approx(10 * math.log10(1 / 0.005), abs=1e-9)
    a = np.full((16, 16, 3), 100, np.uint8)
    assert psnr(a, a + 5) == pytest.approx(20 * math.log10(255 / 5), abs=1e-5)
    assert psnr(a, a) == math.inf
    assert psnr(a, a.astype(np.float32) / 255) == math.inf  # uint8 and float on one scale


def test_psnr_matches_skimage_on_a_photo():
    rng = np.random.default_rng(0)
    a = _astronaut()[:128, :160].astype(np.float64) / 255
    b = np.clip(a + rng.normal(0, 0.03, a.shape), 0, 1)
    ref = skimage_metrics.peak_signal_noise_ratio(a, b, data_range=1.0)
    assert psnr(a, b) == pytest.approx(ref, abs=1e-9)


def test_linf_255():
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[3, 4, 2] = 7
    assert linf_255(a, b) == 7.0
    assert linf_255(a.astype(np.float32), b.astype(np.float32) / 255) == pytest.approx(7.0, 1e-5)
    assert linf_255(a, a) == 0.0


@pytest.mark.parametrize("case", ["photo_noise", "photo_blur", "random", "uint8", "tall"])
def test_ssim_matches_skimage(case):
    rng = np.random.default_rng(3)
    photo = _astronaut()[100:196, 150:270].astype(np.float64) / 255
    if case == "photo_noise":
        a, b = photo, np.clip(photo + rng.normal(0, 0.05, photo.shape), 0, 1)
    elif case == "photo_blur":
        a, b = photo, (photo + np.roll(photo, 1, 0) + np.roll(photo, 1, 1)) / 3
    elif case == "random":
        a, b = rng.uniform(size=(40, 50, 3)), rng.uniform(size=(40, 50, 3))
    elif case == "uint8":
        a = (photo * 255).astype(np.uint8)
        b = np.clip(a.astype(int) + rng.integers(-9, 10, a.shape), 0, 255).astype(np.uint8)
        assert ssim(a, b) == pytest.approx(ssim(a / 255, b / 255), abs=1e-6)
        a, b = a / 255, b / 255
    else:
        a = photo[:, :20]
        b = np.clip(a * 0.9 + 0.05, 0, 1)
    ours = ssim(a, b)
    assert abs(ours - _skimage_ssim(a, b)) < 1e-3
    assert -1.0 <= ours <= 1.0


def test_ssim_edges():
    a = sample_rgb(32, 32)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, 255 - a) < 0.0  # inverted structure correlates negatively
    with pytest.raises(ValueError, match="differ in size"):
        ssim(a, a[:, :20])
    with pytest.raises(ValueError, match="at least 11"):
        ssim(a[:8], a[:8])


def test_sharing_downscales_long_side_and_never_upscales():
    wide = np.zeros((1080, 1920, 3), np.float32)
    assert simulate_sharing(wide).shape == (608, 1080, 3)
    tall = np.zeros((1500, 1000, 3), np.uint8)
    assert simulate_sharing(tall, long_side=512).shape == (512, 341, 3)
    small = sample_rgb(96, 128)
    out = simulate_sharing(small)
    assert out.shape == (96, 128, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_sharing_is_lossy_jpeg_whose_damage_follows_quality():
    photo = _astronaut()[:256, :256]
    q75 = simulate_sharing(photo)
    assert linf_255(photo, q75) > 0.0  # something was lost
    p30, p75, p95 = (psnr(photo, simulate_sharing(photo, jpeg_quality=q)) for q in (30, 75, 95))
    assert p30 < p75 < p95
    assert 27.0 < p75 < 45.0  # a normal q75 JPEG of a photo, not a corrupted one


def test_sharing_downscale_is_antialiased():
    # A 1-pixel checkerboard has no content at the lower resolution: an antialiased filter maps
    # it to flat grey, point sampling would keep black/white pixels.
    board = (np.indices((400, 400)).sum(0) % 2).astype(np.float32)
    board = np.repeat(board[..., None], 3, axis=2)
    out = simulate_sharing(board, jpeg_quality=95, long_side=100)
    assert out.shape == (100, 100, 3)
    assert abs(float(out.mean()) - 0.5) < 0.02 and float(out.std()) < 0.03


def test_sharing_rejects_bad_arguments():
    px = sample_rgb(32, 32)
    with pytest.raises(ValueError):
        simulate_sharing(px, jpeg_quality=0)
    with pytest.raises(ValueError):
        simulate_sharing(px, long_side=0)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        simulate_sharing(px[..., 0])
