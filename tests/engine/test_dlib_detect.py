"""dlib face detection + 68-point landmarks on real photos."""

from __future__ import annotations

import time

import numpy as np
import pytest

from dladiff_app.engine.faces.types import FaceDetector
from tests.engine import real_photos


@pytest.fixture(scope="module")
def detector():
    from dladiff_app.engine.faces.dlib_detect import DlibDetector

    return DlibDetector()


def test_finds_all_six_faces_of_the_group_photo_largest_first(detector) -> None:
    assert isinstance(detector, FaceDetector) and detector.name == "dlib"
    photo = real_photos.t1()
    start = time.perf_counter()
    faces = detector.detect(photo)
    elapsed = time.perf_counter() - start
    print(f"dlib HOG detect + 68 landmarks on t1.jpg: {len(faces)} faces in {elapsed:.2f} s")
    assert len(faces) == 6
    areas = [f.area for f in faces]
    assert areas == sorted(areas, reverse=True) and areas[0] > areas[-1]
    for face in faces:
        assert face.dlib_shape is not None and face.dlib_shape.shape == (68, 2)
        assert face.landmarks5.shape == (5, 2)
        x0, y0, x1, y1 = face.box
        left_eye, right_eye, nose, mouth_l, mouth_r = face.landmarks5
        assert x0 < left_eye[0] < right_eye[0] < x1  # image-left eye first
        assert mouth_l[0] < mouth_r[0]
        assert min(left_eye[1], right_eye[1]) < nose[1] < max(mouth_l[1], mouth_r[1])
        assert y0 - 5 < nose[1] < y1 + 5


def test_finds_the_astronauts_face(detector) -> None:
    faces = detector.detect(real_photos.astronaut())
    assert len(faces) >= 1
    x0, y0, x1, y1 = faces[0].box
    # Eileen Collins' face lies around x 170-280, y 60-180 in skimage's astronaut.
    assert 150 < (x0 + x1) / 2 < 300 and 60 < (y0 + y1) / 2 < 180


def test_no_face_gives_an_empty_list(detector) -> None:
    assert detector.detect(real_photos.coffee()) == []
    ramp = np.linspace(0, 1, 300 * 400, dtype=np.float32).reshape(300, 400, 1)
    assert detector.detect(np.repeat(ramp, 3, axis=2)) == []


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return float(inter / (area - inter))


def test_large_photo_is_searched_downscaled_and_landmarked_at_full_size(detector) -> None:
    photo = real_photos.t1()
    small_faces = detector.detect(photo)
    big = real_photos.resized(photo, 2.5)  # 3200x2215: searched on a 1600 px copy
    big_faces = detector.detect(big)
    assert len(big_faces) == 6
    for large in big_faces:
        box = large.box / 2.5
        match = max(small_faces, key=lambda f: _iou(f.box, box))
        assert _iou(match.box, box) > 0.6
        # landmarks were placed on the full-resolution photo, so they agree with the
        # original-size ones to a few original pixels
        assert np.abs(large.dlib_shape / 2.5 - match.dlib_shape).mean() < 4.0
        x0, y0, x1, y1 = large.box
        assert (large.dlib_shape[:, 0] < big.shape[1]).all() and x1 - x0 > 200


def test_dlib_shape_for_a_box_from_another_detector(detector) -> None:
    from dladiff_app.engine.faces.dlib_detect import dlib_shape_for_box

    photo = real_photos.t1()
    face = detector.detect(photo)[0]
    np.testing.assert_array_equal(dlib_shape_for_box(photo, face.box), face.dlib_shape)
    shifted = dlib_shape_for_box(photo, face.box + np.array([3.0, 2.0, 3.0, 2.0]))
    assert shifted.shape == (68, 2) and np.abs(shifted - face.dlib_shape).mean() < 4.0


def test_mmod_cnn_mode_on_a_small_face() -> None:
    from dladiff_app.engine.faces.dlib_detect import DlibDetector

    photo = real_photos.tom_hanks()  # 112x112: cheap enough for the CNN detector on CPU
    start = time.perf_counter()
    faces = DlibDetector(mode="mmod").detect(photo)
    print(f"dlib MMOD on a 112x112 face: {len(faces)} face(s) in {time.perf_counter() - start:.2f} s")
    assert len(faces) == 1
    assert faces[0].dlib_shape is not None and faces[0].dlib_shape.shape == (68, 2)
    assert 0.5 < faces[0].score < 5.0
    with pytest.raises(ValueError, match="mode"):
        DlibDetector(mode="haar")
