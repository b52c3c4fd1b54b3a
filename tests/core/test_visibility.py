"""Face-region visibility figures: CIEDE2000 against scikit-image's reference, and the face box."""

from __future__ import annotations

import numpy as np
import pytest

from dladiff_app.core.visibility import (
    ciede2000,
    face_visibility,
    srgb_to_lab,
    widened_box,
)


def test_lab_and_ciede2000_match_scikit_image() -> None:
    from skimage.color import deltaE_ciede2000, rgb2lab

    rng = np.random.default_rng(0)
    a = rng.random((40, 40, 3))
    b = np.clip(a + rng.normal(0, 0.03, a.shape), 0, 1)
    assert np.abs(srgb_to_lab(a) - rgb2lab(a)).max() < 1e-3
    ours = ciede2000(srgb_to_lab(a), srgb_to_lab(b))
    ref = deltaE_ciede2000(rgb2lab(a), rgb2lab(b))
    assert np.abs(ours - ref).max() < 1e-3


def test_sharma_reference_pairs() -> None:
    # Pairs 1, 7 and 17 of Sharma, Wu & Dalal's CIEDE2000 test data.
    lab1 = np.array([[50.0, 2.6772, -79.7751], [50.0, 0.0, 0.0], [50.0, 2.5, 0.0]])
    lab2 = np.array([[50.0, 0.0, -82.7485], [50.0, -1.0, 2.0], [73.0, 25.0, -18.0]])
    assert ciede2000(lab1, lab2) == pytest.approx([2.0425, 2.3669, 27.1492], abs=1e-4)


def test_face_visibility_on_and_off_the_face() -> None:
    rng = np.random.default_rng(1)
    clean = rng.random((120, 160, 3)).astype(np.float32)
    box = (40.0, 30.0, 80.0, 70.0)
    same = face_visibility(clean, clean, [box])
    assert same is not None and same.ssim == pytest.approx(1.0) and same.de_mean == 0.0
    off = clean.copy()
    off[:, 130:] = np.clip(off[:, 130:] + 0.2, 0, 1)  # changed far from the face only
    assert face_visibility(clean, off, [box]).de_p95 == 0.0  # type: ignore[union-attr]
    on = clean.copy()
    x0, y0, x1, y1 = widened_box(box, 160, 120)
    on[y0:y1, x0:x1] = np.clip(on[y0:y1, x0:x1] + 0.05, 0, 1)
    vis = face_visibility(clean, on, [box])
    assert vis is not None and vis.de_mean > 1.0 and vis.ssim < 1.0 and vis.faces == 1
    assert face_visibility(clean, on, []) is None
    assert widened_box(box, 160, 120) == (30, 20, 91, 81)
