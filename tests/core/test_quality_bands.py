"""Band-by-band PSNR/SSIM/L-inf equal the whole-image metrics (with bounded memory)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dladiff_app.core.quality import linf_255, psnr, ssim
from dladiff_app.core.quality_bands import banded_quality


@pytest.mark.parametrize("shape", [(300, 97, 3), (269, 40, 3), (40, 50, 3)])
def test_bands_match_the_whole_image(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(1)
    a = rng.random(shape, dtype=np.float32)
    b = np.clip(a + rng.normal(0, 0.03, shape).astype(np.float32), 0, 1)
    b[5:30, 7:20] = a[5:30, 7:20]  # some identical areas, some changed
    got = banded_quality(a, b, band_rows=16)
    assert got[0] == pytest.approx(psnr(a, b), rel=1e-12)
    assert got[1] == pytest.approx(ssim(a, b), rel=1e-12)
    assert got[2] == linf_255(a, b)


def test_identical_uint8_photos() -> None:
    a = np.random.default_rng(2).integers(0, 256, (100, 30, 3), dtype=np.uint8)
    p, s, m = banded_quality(a, a.copy(), band_rows=8)
    assert math.isinf(p) and s == pytest.approx(1.0) and m == 0.0
