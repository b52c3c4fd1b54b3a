"""The ensemble path of the zero-shot shield with a converted ONNX ArcFace (tiny, random).

An insightface-shaped ONNX recognizer is converted to torch (``ArcFaceEncoder``), aligned with
insightface's ``norm_crop`` on real landmarks (dlib's, on a real photo), and attacked together
with a second encoder: budget, gradient through alignment, weights and crop exactness.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dladiff_app.core.presets import ProtectionSettings
from dladiff_app.engine.shield.layer2 import (
    FIRST_RELEASE,
    clean_embeddings,
    exact_regions,
    protect_faces,
)
from tests.engine import real_photos
from tests.engine.test_layer2 import BoxEncoder

SETTINGS = ProtectionSettings(eps=8.0, seed=5, eot=False)


@pytest.fixture(scope="module")
def astronaut_faces():
    from dladiff_app.engine.faces.dlib_detect import DlibDetector

    photo = real_photos.astronaut()
    faces = DlibDetector().detect(photo)
    assert len(faces) == 1
    return real_photos.to_tensor(photo), faces


@pytest.fixture(scope="module")
def arcface(tiny_arcface_onnx: Path):
    from dladiff_app.engine.faces.arcface import ArcFaceEncoder

    enc = ArcFaceEncoder(tiny_arcface_onnx, name="tiny_arcface").eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc


def _noise_drop(img: torch.Tensor, faces, enc) -> float:
    """1 - cos of the encoder between the clean photo and uniform noise of the same budget."""
    g = torch.Generator().manual_seed(0)
    noisy = (img + (torch.rand(img.shape, generator=g) * 2 - 1) * 8 / 255).clamp(0, 1)
    with torch.no_grad():
        a, b = enc.embed(img, faces[0]).flatten(), enc.embed(noisy, faces[0]).flatten()
    return max(1e-6, 1.0 - float(torch.nn.functional.cosine_similarity(a, b, dim=0)))


def test_crop_is_exact_for_the_converted_encoder(astronaut_faces, arcface) -> None:
    img, faces = astronaut_faces
    full = clean_embeddings(img, faces, [arcface])
    (region,) = exact_regions(img, faces, [arcface], full)
    # A crop, not the photo: the cost follows the face.
    assert region.width * region.height < 0.8 * img.shape[-1] * img.shape[-2]
    emb = arcface.embed(region.crop(img), region.local_faces[0])
    assert float(torch.nn.functional.cosine_similarity(emb, full[0]["tiny_arcface"], dim=0)) > 0.9999


def test_ensemble_attack_moves_both_encoders(astronaut_faces, arcface) -> None:
    img, faces = astronaut_faces
    standin = BoxEncoder()
    res = protect_faces(img, None, faces, [arcface, standin], SETTINGS, steps=8,
                        options=FIRST_RELEASE)
    assert float((res.protected - img).abs().max()) <= 8 / 255 + 1e-6
    # On the 8-bit grid already: writing the file keeps what was optimised.
    p = res.protected.numpy()
    assert float(np.abs(np.rint(p * 255) / 255 - p).max()) < 1e-6
    before, after = res.initial_similarity[0], res.final_similarity[0]
    # The tiny random ArcFace is very smooth (same-budget noise leaves it at cos 1.0000), so
    # its move is small in absolute terms but far beyond what noise does.
    assert 1 - after["tiny_arcface"] > 5 * _noise_drop(img, faces, arcface)
    assert after["standin"] < before["standin"] - 0.05


def test_weights_choose_what_is_attacked(astronaut_faces, arcface) -> None:
    img, faces = astronaut_faces
    standin = BoxEncoder()
    only_arc = protect_faces(img, None, faces, [arcface, standin], SETTINGS, steps=8,
                             weights={"standin": 0.0}, options=FIRST_RELEASE)
    both = protect_faces(img, None, faces, [arcface, standin], SETTINGS, steps=8,
                         options=FIRST_RELEASE)
    # Attacking with the ArcFace alone moves the held-out stand-in less than attacking it.
    assert only_arc.final_similarity[0]["standin"] > both.final_similarity[0]["standin"]
    assert 1 - only_arc.final_similarity[0]["tiny_arcface"] > 5 * _noise_drop(img, faces, arcface)
