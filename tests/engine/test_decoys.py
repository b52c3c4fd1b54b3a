"""Decoy identities: the bank comes from insightface's own sample photos, and a face is never
pulled towards someone the encoders take for the same person."""

from __future__ import annotations

import pytest
import torch

from dladiff_app.engine.faces.dlib_detect import DlibDetector
from dladiff_app.engine.faces.dlib_resnet import DlibEncoder
from dladiff_app.engine.faces.score import same_person, similarity
from dladiff_app.engine.shield.decoys import decoy_bank, decoy_photos, pick_decoy
from dladiff_app.engine.shield.layer2 import ShieldOptions, protect_faces
from tests.engine import real_photos

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dlib_kit():  # type: ignore[no-untyped-def]
    return DlibDetector(), [DlibEncoder.load().eval()]


def test_bank_is_the_package_photos_faces(dlib_kit) -> None:  # type: ignore[no-untyped-def]
    detector, encoders = dlib_kit
    assert [p.name for p in decoy_photos()] == ["t1.jpg", "Tom_Hanks_54745.png"]
    bank = decoy_bank(detector, encoders)
    assert len(bank) == 7 and all(b["dlib"].shape == (128,) for b in bank)


def test_a_face_never_gets_itself_as_decoy(dlib_kit) -> None:  # type: ignore[no-untyped-def]
    detector, encoders = dlib_kit
    bank = decoy_bank(detector, encoders)
    (enc,) = encoders
    for own in bank:  # each t1 face is in the bank: it must pick someone else, far away
        chosen = pick_decoy(own, bank, encoders)
        assert chosen is not None and chosen is not own
        assert not same_person(enc, float(similarity(enc, own["dlib"], chosen["dlib"])))
    assert pick_decoy(bank[0], bank[:1], encoders) is None


def test_decoy_term_pulls_towards_the_decoy(dlib_kit) -> None:  # type: ignore[no-untyped-def]
    from dladiff_app.core.presets import ProtectionSettings

    detector, encoders = dlib_kit
    photo = real_photos.astronaut()
    faces = detector.detect(photo)[:1]
    image = real_photos.to_tensor(photo)
    bank = decoy_bank(detector, encoders)
    settings = ProtectionSettings(eps=8.0, layer2_steps=6, seed=1, eot=False)
    with torch.no_grad():
        clean = encoders[0].embed(image, faces[0])
    decoy = pick_decoy({"dlib": clean}, bank, encoders)
    assert decoy is not None

    def to_decoy(opts: ShieldOptions) -> float:
        res = protect_faces(image, None, faces, encoders, settings, options=opts, decoys=bank)
        with torch.no_grad():
            emb = encoders[0].embed(res.protected, faces[0])
        return float(torch.linalg.vector_norm(emb - decoy["dlib"]))

    assert to_decoy(ShieldOptions(decoy_weight=1.0)) < to_decoy(ShieldOptions()) - 0.02
