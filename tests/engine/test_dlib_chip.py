"""The differentiable dlib face-chip warp against dlib's own extract_image_chip."""

from __future__ import annotations

import dlib
import numpy as np
import pytest
import torch

from dladiff_app.engine.faces.dlib_chip import extract_face_chip, face_chip_details, pyramid_down2
from tests.engine import real_photos


@pytest.fixture(scope="module")
def detector(pack):
    from dladiff_app.engine.faces.dlib_detect import DlibDetector

    return DlibDetector(pack=pack)


def _dlib_chip(photo8: np.ndarray, shape: np.ndarray) -> np.ndarray:
    rect = dlib.rectangle(0, 0, photo8.shape[1] - 1, photo8.shape[0] - 1)
    det = dlib.full_object_detection(rect, [dlib.point(int(x), int(y)) for x, y in shape])
    return dlib.get_face_chip(photo8, det, size=150, padding=0.25).astype(np.float32)


def _compare(photo: np.ndarray, shape: np.ndarray) -> tuple[float, float]:
    ours = extract_face_chip(real_photos.to_tensor(photo), shape)[0].permute(1, 2, 0).numpy()
    theirs = _dlib_chip(real_photos.as_uint8(photo), shape)
    diff = np.abs(ours - theirs) / 255.0
    return float(diff.mean()), float(diff.max())


def _cases(detector, pack) -> list[tuple[str, np.ndarray, np.ndarray]]:
    t1 = real_photos.t1()
    cases = [(f"t1 face {i}", t1, f.dlib_shape) for i, f in enumerate(detector.detect(t1))]
    astro = real_photos.astronaut()
    cases.append(("astronaut", astro, detector.detect(astro)[0].dlib_shape))
    # 5-point landmarks (dlib's other template)
    sp5 = dlib.shape_predictor(str(pack.shape5))
    face = detector.detect(t1)[0]
    x0, y0, x1, y1 = (int(round(v)) for v in face.box)
    parts = sp5(real_photos.as_uint8(t1), dlib.rectangle(x0 + 1, y0 + 1, x1 - 1, y1 - 1)).parts()
    cases.append(("t1 5-point", t1, np.array([[p.x, p.y] for p in parts], dtype=np.float64)))
    # a big face: the chip goes through 1-2 pyramid levels
    big = real_photos.resized(t1, 3.0)
    cases.append(("t1 x3 (pyramid)", big, detector.detect(big)[0].dlib_shape))
    # a face cut by the photo's edge: dlib fills with black
    edge = int((face.box[0] + face.box[2]) / 2)
    cut = np.ascontiguousarray(t1[:, edge:])
    cases.append(("t1 face cut by the edge", cut, face.dlib_shape - np.array([edge, 0.0])))
    return cases


def test_chip_matches_dlib_extract_image_chip(detector, pack) -> None:
    worst_mean = worst_max = 0.0
    for name, photo, shape in _cases(detector, pack):
        mean, peak = _compare(photo, shape)
        print(f"chip vs dlib [{name}]: mean abs {mean:.6f}, max abs {peak:.4f} (0-1 scale)")
        worst_mean, worst_max = max(worst_mean, mean), max(worst_max, peak)
        assert mean <= 0.0005, name
    print(f"worst: mean {worst_mean:.6f}, max {worst_max:.4f}")


def test_chip_geometry_matches_get_face_chip_details(detector) -> None:
    photo8 = real_photos.as_uint8(real_photos.t1())
    for face in detector.detect(real_photos.t1()):
        rect = dlib.rectangle(0, 0, 10, 10)
        det = dlib.full_object_detection(rect, [dlib.point(int(x), int(y)) for x, y in face.dlib_shape])
        theirs = dlib.get_face_chip_details(det, 150, 0.25)
        ours = face_chip_details(face.dlib_shape)
        got = [ours.rect.left, ours.rect.top, ours.rect.right, ours.rect.bottom, ours.angle]
        want = [theirs.rect.left(), theirs.rect.top(), theirs.rect.right(), theirs.rect.bottom(),
                theirs.angle]
        np.testing.assert_allclose(got, want, atol=1e-6)
        assert (ours.rows, ours.cols) == (theirs.rows, theirs.cols)
    assert photo8.dtype == np.uint8


def test_pyramid_level_is_dlibs_pyramid_down_2() -> None:
    photo8 = real_photos.as_uint8(real_photos.astronaut())[:101, :150]
    theirs = dlib.pyramid_down(2)(np.ascontiguousarray(photo8)).astype(np.float32)
    x = torch.from_numpy(photo8.astype(np.float32)).permute(2, 0, 1)[None]
    ours = pyramid_down2(x)[0].permute(1, 2, 0).numpy()
    assert ours.shape == theirs.shape == (49, 73, 3)
    np.testing.assert_array_equal(ours, theirs)


def test_gradient_reaches_the_face_and_nothing_far_away(detector) -> None:
    photo = real_photos.resized(real_photos.t1(), 2.0)  # large enough to use the pyramid
    face = detector.detect(photo)[0]
    x = real_photos.to_tensor(photo).requires_grad_(True)
    chip = extract_face_chip(x, face.dlib_shape)
    (chip * torch.linspace(-1, 1, 150)).sum().backward()
    grad = x.grad[0].abs().sum(0).numpy()
    assert np.isfinite(grad).all()
    x0, y0, x1, y1 = (int(v) for v in face.box)
    assert grad[y0:y1, x0:x1].mean() > 0
    far = np.ones_like(grad, dtype=bool)
    pad = int(1.0 * (x1 - x0))
    far[max(0, y0 - pad) : y1 + pad, max(0, x0 - pad) : x1 + pad] = False
    assert far.any() and (grad[far] == 0).all()
