"""The zero-shot shield against the real offline dlib encoder, judged by dlib itself.

Protection uses the PyTorch port of dlib's ResNet (``DlibEncoder``); the judge is the real
``dlib.face_recognition_model_v1`` on faces re-detected in the saved 8-bit PNG, as an attacker
would see them. "Different person" for dlib: Euclidean distance >= 0.6.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dladiff_app.core.imageio import load_image, save_image
from dladiff_app.core.presets import preset
from tests.engine import real_photos

pytestmark = [pytest.mark.real_weights, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def dlib_stack():  # -> (DlibDetector, DlibEncoder, dlib recognition model)
    import dlib

    from dladiff_app.engine.faces.dlib_detect import DlibDetector
    from dladiff_app.engine.faces.dlib_resnet import DlibEncoder
    from dladiff_app.engine.models.dlib_pack import find_dlib_pack

    pack = find_dlib_pack()

    enc = DlibEncoder.load(pack.recognition).eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    # Same numbers, ~2-3x faster convolutions on CPU (oneDNN instead of the slow fallback).
    enc.to(memory_format=torch.channels_last)
    return DlibDetector(), enc, dlib.face_recognition_model_v1(str(pack.recognition))


def _descriptor(rec, image8: np.ndarray, face) -> np.ndarray:
    import dlib

    x0, y0, x1, y1 = (int(round(v)) for v in face.box)
    pts = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in face.dlib_shape])
    det = dlib.full_object_detection(dlib.rectangle(x0, y0, x1, y1), pts)
    return np.asarray(rec.compute_face_descriptor(image8, det))


def judge(detector, rec, clean8: np.ndarray, saved8: np.ndarray, faces) -> list[float | None]:
    """dlib distance of each clean face to the face re-detected at its place in ``saved8``
    (None: no face found there any more, which also defeats an attacker)."""
    found = detector.detect(saved8.astype(np.float32) / 255.0)
    out: list[float | None] = []
    for f in faces:
        centre = (f.box[:2] + f.box[2:]) / 2
        size = f.box[2] - f.box[0]
        near = [g for g in found
                if np.linalg.norm((g.box[:2] + g.box[2:]) / 2 - centre) < 0.3 * size]
        out.append(None if not near else float(np.linalg.norm(
            _descriptor(rec, saved8, near[0]) - _descriptor(rec, clean8, f))))
    return out


def _protect_and_save(stack, photo: np.ndarray, steps: int, tmp_path: Path,
                      preset_name: str = "high"):
    from dladiff_app.engine.shield.layer2 import protect_faces

    detector, enc, rec = stack
    faces = detector.detect(photo)
    assert faces, "the test photo must contain faces"
    clean = real_photos.to_tensor(photo)
    # High, the strong option (Low and Medium hold every face under 1 JND, where dlib still
    # recognises it: see test_low_and_medium_faces_are_not_visibly_changed).
    settings = preset(preset_name)
    res = protect_faces(clean, None, faces, [enc], settings, steps=steps)
    path = save_image(res.protected[0].permute(1, 2, 0).numpy(), tmp_path / "protected.png")
    saved8 = real_photos.as_uint8(load_image(path).pixels)
    return faces, res, saved8


def _check_file(stack, photo, faces, res, saved8) -> list[float | None]:
    detector, _, rec = stack
    clean8 = real_photos.as_uint8(photo)
    diff = np.abs(saved8.astype(np.int16) - clean8.astype(np.int16))
    assert diff.max() <= preset("high").eps  # the budget, on the file as written
    assert diff.max() > 0  # the file really changed (random start: no zero-gradient trap)
    # Far from every face (outside every crop) the file is the clean photo, bit for bit.
    untouched = np.ones(diff.shape[:2], dtype=bool)
    for x0, y0, x1, y1 in res.regions:
        untouched[y0:y1, x0:x1] = False
    assert untouched.any() and diff[untouched].max() == 0
    distances = judge(detector, rec, clean8, saved8, faces)
    return distances


def test_astronaut_is_a_different_person_to_dlib(dlib_stack, tmp_path: Path) -> None:
    photo = real_photos.astronaut()
    faces, res, saved8 = _protect_and_save(dlib_stack, photo, steps=30, tmp_path=tmp_path)
    distances = _check_file(dlib_stack, photo, faces, res, saved8)
    assert len(faces) == 1
    # The optimiser's own figure agrees with the honest judge (exact chip, same 8-bit file).
    assert res.final_similarity[0]["dlib"] >= 0.6
    assert all(d is None or d >= 0.6 for d in distances), distances


def test_group_photo_every_face_is_a_different_person(dlib_stack, tmp_path: Path) -> None:
    photo = real_photos.t1()
    faces, res, saved8 = _protect_and_save(dlib_stack, photo, steps=20, tmp_path=tmp_path)
    distances = _check_file(dlib_stack, photo, faces, res, saved8)
    assert len(faces) == 6
    assert all(d is None or d >= 0.6 for d in distances), distances


def test_shared_copy_is_a_different_person_at_high(dlib_stack, tmp_path: Path) -> None:
    """High: the copy a platform serves (JPEG q75; the photo is under 1080 px) is judged, as
    an attacker would download it."""
    from dladiff_app.core.quality import simulate_sharing

    photo = real_photos.astronaut()
    faces, res, saved8 = _protect_and_save(dlib_stack, photo, steps=preset("high").layer2_steps,
                                           tmp_path=tmp_path)
    clean8 = real_photos.as_uint8(photo)
    shared8 = real_photos.as_uint8(simulate_sharing(saved8))
    detector, _, rec = dlib_stack
    (d,) = judge(detector, rec, clean8, shared8, faces)
    assert d is None or d >= 0.6, d


@pytest.mark.parametrize("name", ["low", "medium"])
def test_low_and_medium_faces_are_not_visibly_changed(dlib_stack, tmp_path: Path,
                                                      name: str) -> None:
    """The promise of Low and Medium, measured independently on the file as written: the face
    is under 1 JND at 100% (the visible-difference model), however far the shield got."""
    import torch

    from dladiff_app.engine.visible_diff import face_jnd

    photo = real_photos.astronaut()
    faces, res, saved8 = _protect_and_save(dlib_stack, photo, steps=preset(name).layer2_steps,
                                           tmp_path=tmp_path, preset_name=name)
    clean8 = real_photos.as_uint8(photo)
    assert np.abs(saved8.astype(np.int16) - clean8.astype(np.int16)).max() > 0

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1)[None]

    seen = face_jnd(t(clean8), t(saved8), [tuple(map(float, f.box[:4])) for f in faces])
    assert seen is not None and seen < 1.0


def test_big_face_is_protected_through_downscaled_views(dlib_stack, tmp_path: Path) -> None:
    """A 2048 px photo with a ~350 px face: the views are computed at the encoder's scale, yet
    the full-resolution file is a different person to dlib, also after sharing (1080 px)."""
    from PIL import Image

    from dladiff_app.core.quality import simulate_sharing

    small = real_photos.as_uint8(real_photos.astronaut())
    photo = np.asarray(Image.fromarray(small).resize((2048, 2048), Image.Resampling.LANCZOS),
                       dtype=np.float32) / 255.0
    faces, res, saved8 = _protect_and_save(dlib_stack, photo, steps=50, tmp_path=tmp_path)
    distances = _check_file(dlib_stack, photo, faces, res, saved8)
    assert all(d is None or d >= 0.6 for d in distances), distances
    detector, _, rec = dlib_stack
    shared8 = real_photos.as_uint8(simulate_sharing(saved8))
    clean_shared8 = real_photos.as_uint8(simulate_sharing(photo))
    s = shared8.shape[1] / saved8.shape[1]
    centres = [(f.box[:2] + f.box[2:]) / 2 * s for f in faces]
    # The protected faces, found again in the clean shared copy (not other detections).
    found = [g for g in detector.detect(clean_shared8.astype(np.float32) / 255.0)
             if min(np.linalg.norm((g.box[:2] + g.box[2:]) / 2 - c) for c in centres) < 20]
    assert len(found) == len(faces)
    # After sharing, only Eileen Collins's face is judged: at 2048 px dlib also finds a weak
    # "face" on her suit (score 0.05). It is protected like any detection (the file check
    # above), but since every face is held at Medium's face SSIM (0.972), that patch of fabric
    # gets less of the budget than under the old fixed weight, and its dlib distance after
    # sharing is 0.40 (measured, session 6); the real face stays at 0.80.
    real = [(f.box[:2] + f.box[2:]) / 2 * s for f in faces if f.score > 0.5]
    assert len(real) == 1
    hers = [g for g in found if np.linalg.norm((g.box[:2] + g.box[2:]) / 2 - real[0]) < 20]
    assert len(hers) == 1
    shared = judge(detector, rec, clean_shared8, shared8, hers)
    assert shared and all(d is not None and d >= 0.6 for d in shared), shared
