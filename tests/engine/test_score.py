"""Identity scores: plumbing with the tiny SCRFD/ArcFace on a real photo, gradients, matching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dladiff_app.engine.faces.align import ARCFACE_TEMPLATE_112
from dladiff_app.engine.faces.arcface import ARCFACE_THRESHOLD, ArcFaceEncoder, input_normalisation
from dladiff_app.engine.faces.registry import encoder_from_path
from dladiff_app.engine.faces.score import match_faces, score_images, similarity, to_tensor
from dladiff_app.engine.faces.scrfd import ScrfdDetector
from dladiff_app.engine.faces.types import Face, FaceDetector, IdentityEncoder
from tests.engine import real_photos


def _t1_rgb() -> np.ndarray:
    return np.array(real_photos.t1())  # a writable copy


def _face_at(x: float, y: float, scale: float) -> Face:
    lm = (ARCFACE_TEMPLATE_112 - 56.0) * scale + [x, y]
    half = 56.0 * scale
    return Face(box=np.array([x - half, y - half, x + half, y + half]), landmarks5=lm)


def test_arcface_encoder_equals_insightface_pipeline(tiny_arcface_onnx: Path) -> None:
    """Our torch crop + converted graph vs insightface's norm_crop + onnxruntime."""
    from insightface.model_zoo import get_model

    img = _t1_rgb()
    face = _face_at(520.0, 260.0, 1.6)
    enc = ArcFaceEncoder(tiny_arcface_onnx)
    assert isinstance(enc, IdentityEncoder) and enc.threshold == ARCFACE_THRESHOLD
    assert (enc.input_mean, enc.input_std) == (127.5, 127.5)
    ours = enc.embed(to_tensor(img), face).detach().numpy()

    class _Kps:
        kps = face.landmarks5.astype(np.float32)

    bgr = (img[:, :, ::-1] * 255 + 0.5).astype(np.uint8)
    theirs = get_model(str(tiny_arcface_onnx)).get(bgr, _Kps())
    cos = float(ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs))
    assert cos > 0.9999, cos
    assert np.abs(ours - theirs).max() < 5e-3  # insightface rounds the crop to 8 bits


def test_score_gradient_is_local_to_the_face(tiny_arcface_onnx: Path) -> None:
    enc = encoder_from_path(tiny_arcface_onnx)
    img = to_tensor(_t1_rgb())
    face = _face_at(520.0, 260.0, 1.6)
    ref = enc.embed(img, face).detach()
    delta = (torch.rand_like(img) * 2 - 1) * (4 / 255)
    delta.requires_grad_(True)
    sim = similarity(enc, enc.embed(img + delta, face), ref)
    sim.backward()
    g = delta.grad
    assert g is not None and torch.isfinite(g).all()
    x0, y0, x1, y1 = (int(v) for v in face.box)
    assert g[..., y0:y1, x0:x1].abs().sum() > 0
    inside = torch.zeros_like(g, dtype=torch.bool)
    inside[..., max(0, y0 - 60) : y1 + 60, max(0, x0 - 60) : x1 + 60] = True
    assert g[~inside].abs().sum() == 0


def test_score_images_with_tiny_models(tiny_scrfd_onnx: Path, tiny_arcface_onnx: Path) -> None:
    det = ScrfdDetector(tiny_scrfd_onnx)
    assert isinstance(det, FaceDetector)
    enc = ArcFaceEncoder(tiny_arcface_onnx)
    img = _t1_rgb()
    faces = det.detect(img)
    assert faces, "the tiny detector finds (random) boxes on t1.jpg"
    assert all(f.landmarks5.shape == (5, 2) for f in faces)
    assert [f.area for f in faces] == sorted((f.area for f in faces), reverse=True)

    same = score_images(img, img.copy(), det, [enc])
    (s,) = same[0].scores
    assert s.value == pytest.approx(1.0, abs=1e-5) and s.same_person and s.encoder == "rec_tiny"

    blank = np.zeros_like(img)
    (m,) = score_images(img, blank, det, [enc])
    assert m.other_face is None
    assert m.scores[0].value is None and m.scores[0].same_person is None
    assert m.scores[0].note == "no face found in the protected image"
    (m,) = score_images(blank, img, det, [enc], labels=("a.jpg", "b.jpg"))
    assert m.scores[0].note == "no face found in a.jpg"
    moved = np.zeros_like(img)
    h, w = img.shape[0] // 2, img.shape[1] // 2
    moved[:h, :w] = img[h:, w:]  # the faces, shifted to other positions
    unmatched = score_images(img, moved, det, [enc], match="all")
    notes = {mm.scores[0].note for mm in unmatched if mm.other_face is None}
    assert notes <= {"no face at this position in the protected image"}


def test_matching_uses_relative_boxes() -> None:
    big, small = _face_at(300, 300, 2.0), _face_at(700, 200, 1.0)
    # The same two faces in a copy resized to half: the subject matches its own position.
    half = [Face(box=f.box / 2, landmarks5=f.landmarks5 / 2) for f in (small, big)]
    pairs = match_faces([big, small], (600, 1000), half, (300, 500), match="all")
    assert pairs[0][0] is big and pairs[0][1] is half[1]
    assert pairs[1][0] is small and pairs[1][1] is half[0]
    # No overlap: "largest" falls back to the other photo's largest face, "all" reports none.
    moved = [_face_at(900, 500, 1.0)]
    assert match_faces([big], (600, 1000), moved, (600, 1000))[0][1] is moved[0]
    assert match_faces([big], (600, 1000), moved, (600, 1000), match="all")[0][1] is None
    # A protected copy is the same scene: another face is never taken for the subject's.
    assert match_faces([big], (600, 1000), moved, (600, 1000), same_framing=True)[0][1] is None


def test_mxnet_style_normalisation_is_detected(tmp_path: Path) -> None:
    import onnx

    nodes = [onnx.helper.make_node("Sub", ["x", "m"], ["a"], name="_minus0"),
             onnx.helper.make_node("Mul", ["a", "s"], ["y"], name="_mul0")]
    graph = onnx.helper.make_graph(nodes, "g", [], [])
    assert input_normalisation(onnx.helper.make_model(graph)) == (0.0, 1.0)


@pytest.mark.real_weights
def test_dlib_encoder_on_faces_without_dlib_landmarks() -> None:
    """Faces from SCRFD carry no dlib shape: scoring adds dlib's own landmarks for dlib."""
    from dladiff_app.engine.faces.dlib_detect import DlibDetector
    from dladiff_app.engine.faces.dlib_resnet import DlibEncoder
    from dladiff_app.engine.faces.score import score_pair

    img = _t1_rgb()
    faces = DlibDetector().detect(img)
    bare = [Face(box=f.box, landmarks5=f.landmarks5) for f in faces[:2]]
    enc = DlibEncoder.load()
    (same,) = score_pair(img, bare[0], img, bare[0], [enc])
    (diff,) = score_pair(img, bare[0], img, bare[1], [enc])
    assert same.value == pytest.approx(0.0, abs=1e-4) and same.same_person
    assert diff.value is not None and diff.value > enc.threshold and not diff.same_person
