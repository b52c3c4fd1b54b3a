"""The torch port of dlib's face ResNet against dlib's own descriptors, on real faces."""

from __future__ import annotations

import itertools
import time

import dlib
import numpy as np
import pytest
import torch

from dladiff_app.engine.faces.types import Face, IdentityEncoder
from tests.engine import real_photos


@pytest.fixture(scope="module")
def encoder(pack):
    from dladiff_app.engine.faces.dlib_resnet import DlibEncoder

    return DlibEncoder.load(pack.recognition)


@pytest.fixture(scope="module")
def detector(pack):
    from dladiff_app.engine.faces.dlib_detect import DlibDetector

    return DlibDetector(pack=pack)


@pytest.fixture(scope="module")
def facerec(pack):
    return dlib.face_recognition_model_v1(str(pack.recognition))


@pytest.fixture(scope="module")
def t1_faces(detector) -> list[Face]:
    faces = detector.detect(real_photos.t1())
    assert len(faces) == 6
    return faces


@pytest.fixture(scope="module")
def t1_embeddings(encoder, t1_faces) -> list[np.ndarray]:
    photo = real_photos.t1()
    return [_embed(encoder, photo, f) for f in t1_faces]


def _embed(encoder, photo: np.ndarray, face: Face) -> np.ndarray:
    with torch.no_grad():
        return encoder.embed(real_photos.to_tensor(photo), face).double().numpy()


def _dlib_descriptor(facerec, photo: np.ndarray, shape: np.ndarray) -> np.ndarray:
    photo8 = real_photos.as_uint8(photo)
    rect = dlib.rectangle(0, 0, photo8.shape[1] - 1, photo8.shape[0] - 1)
    det = dlib.full_object_detection(rect, [dlib.point(int(x), int(y)) for x, y in shape])
    return np.array(facerec.compute_face_descriptor(photo8, det))


def test_encoder_protocol(encoder) -> None:
    assert isinstance(encoder, IdentityEncoder)
    assert (encoder.name, encoder.metric, encoder.threshold) == ("dlib", "euclidean", 0.6)


def test_descriptor_matches_dlib(encoder, facerec, t1_faces, t1_embeddings, detector) -> None:
    t1 = real_photos.t1()
    astro = real_photos.astronaut()
    astro_face = detector.detect(astro)[0]
    cases = [(t1, f, e) for f, e in zip(t1_faces, t1_embeddings, strict=True)]
    cases.append((astro, astro_face, _embed(encoder, astro, astro_face)))
    cosines, dists = [], []
    for photo, face, ours in cases:
        theirs = _dlib_descriptor(facerec, photo, face.dlib_shape)
        cosines.append(ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs))
        dists.append(np.linalg.norm(ours - theirs))
    print(f"port vs dlib on {len(cases)} faces: min cosine {min(cosines):.9f}, "
          f"max Euclidean difference {max(dists):.2e}")
    assert min(cosines) >= 0.9999
    assert max(dists) < 1e-3


def test_network_alone_matches_dlib_on_its_own_chip(encoder, facerec, t1_faces) -> None:
    photo8 = real_photos.as_uint8(real_photos.t1())
    rect = dlib.rectangle(0, 0, 10, 10)
    shape = t1_faces[0].dlib_shape
    det = dlib.full_object_detection(rect, [dlib.point(int(x), int(y)) for x, y in shape])
    chip = dlib.get_face_chip(photo8, det, size=150, padding=0.25)
    theirs = np.array(facerec.compute_face_descriptor(chip))
    with torch.no_grad():
        x = torch.from_numpy(chip.astype(np.float32)).permute(2, 0, 1)[None]
        ours = encoder.net(x)[0].double().numpy()
    assert np.abs(ours - theirs).max() < 1e-4


def test_different_people_are_different_to_dlib(t1_embeddings) -> None:
    dists = [np.linalg.norm(a - b) for a, b in itertools.combinations(t1_embeddings, 2)]
    print(f"t1 different people: min distance {min(dists):.3f} over {len(dists)} pairs")
    assert min(dists) >= 0.6


def _match(faces: list[Face], box: np.ndarray) -> Face:
    centre = (box[:2] + box[2:]) / 2
    return min(faces, key=lambda f: np.linalg.norm((f.box[:2] + f.box[2:]) / 2 - centre))


@pytest.mark.parametrize("variant", ["jpeg q75", "resize 0.9"])
def test_same_person_after_jpeg_or_resize(
    encoder, detector, t1_faces, t1_embeddings, variant
) -> None:
    photo = real_photos.t1()
    if variant == "jpeg q75":
        copy, factor = real_photos.jpeg(photo, 75), 1.0
    else:
        copy, factor = real_photos.resized(photo, 0.9), 0.9
    copy_faces = detector.detect(copy)
    dists = []
    for face, clean in zip(t1_faces, t1_embeddings, strict=True):
        other = _match(copy_faces, face.box * factor)
        dists.append(np.linalg.norm(clean - _embed(encoder, copy, other)))
    print(f"{variant}: max same-person distance {max(dists):.3f}")
    assert max(dists) < 0.6


def test_distance_gradient_is_local_and_finite(encoder, t1_faces) -> None:
    photo = real_photos.t1()
    face = t1_faces[0]
    clean = real_photos.to_tensor(photo)
    with torch.no_grad():
        target = encoder.embed(clean, face)
    # start inside a 2/255 ball: at delta = 0 the distance has no gradient (sqrt at 0)
    gen = torch.Generator().manual_seed(0)
    delta = (torch.rand(clean.shape, generator=gen) * 2 - 1) * (2 / 255)
    x = (clean + delta).clamp(0, 1).requires_grad_(True)
    start = time.perf_counter()
    dist = torch.linalg.vector_norm(encoder.embed(x, face) - target)
    dist.backward()
    elapsed = time.perf_counter() - start
    print(f"chip + dlib ResNet forward+backward: {elapsed:.3f} s, distance {float(dist.detach()):.4f}")
    grad = x.grad[0].abs().sum(0).numpy()
    assert np.isfinite(grad).all()
    x0, y0, x1, y1 = (int(v) for v in face.box)
    assert grad[y0:y1, x0:x1].mean() > 0
    far = np.ones_like(grad, dtype=bool)
    pad = x1 - x0
    far[max(0, y0 - pad) : y1 + pad, max(0, x0 - pad) : x1 + pad] = False
    assert (grad[far] == 0).all()
    assert elapsed < 10.0  # ~0.2-0.5 s on an idle 2-core CPU; generous for a shared machine
