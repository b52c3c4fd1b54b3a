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


def _whole_image_reference(clean: np.ndarray, protected: np.ndarray,
                           boxes: list[tuple[float, float, float, float]]) -> tuple[float, ...]:
    """The figures computed the plain way, on full-size float64 copies of both images."""
    from dladiff_app.core.quality import as_unit_float, ssim

    a, b = as_unit_float(clean, "a"), as_unit_float(protected, "b")
    luma = np.array([0.299, 0.587, 0.114])
    h, w = a.shape[:2]
    mask = np.zeros((h, w), dtype=bool)
    ssims, areas = [], []
    for box in boxes:
        x0, y0, x1, y1 = widened_box(box, w, h)
        mask[y0:y1, x0:x1] = True
        ya = np.repeat((a[y0:y1, x0:x1] @ luma)[..., None], 3, axis=-1)
        yb = np.repeat((b[y0:y1, x0:x1] @ luma)[..., None], 3, axis=-1)
        ssims.append(ssim(ya, yb))
        areas.append((x1 - x0) * (y1 - y0))
    de = ciede2000(srgb_to_lab(a[mask]), srgb_to_lab(b[mask]))
    return float(np.average(ssims, weights=areas)), float(de.mean()), float(np.percentile(de, 95))


def test_face_visibility_by_crops_equals_the_whole_image_computation() -> None:
    # Two overlapping faces (their shared pixels count once) and one face taller than a band of
    # rows, on an 8-bit protected copy as the runner measures it.
    rng = np.random.default_rng(2)
    clean = rng.random((700, 420, 3)).astype(np.float32)
    noise = rng.normal(0, 3 / 255, clean.shape)
    protected = np.rint(np.clip(clean + noise, 0, 1) * 255).astype(np.uint8)
    boxes = [(40.0, 40.0, 140.0, 150.0), (110.0, 90.0, 200.0, 190.0),
             (220.0, 200.0, 400.0, 560.0)]
    vis = face_visibility(clean, protected, boxes)
    ssim_ref, mean_ref, p95_ref = _whole_image_reference(clean, protected, boxes)
    assert vis is not None and vis.faces == 3
    assert vis.ssim == pytest.approx(ssim_ref, abs=1e-9)
    assert vis.de_mean == pytest.approx(mean_ref, rel=1e-5)
    assert vis.de_p95 == pytest.approx(p95_ref, rel=1e-5)
