"""EOT transformations and the face-region geometry used by the zero-shot shield."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dladiff_app.engine.faces.types import Face
from dladiff_app.engine.shield import eot
from dladiff_app.engine.shield.face_region import face_regions, feathered_mask
from tests.engine import real_photos


@pytest.fixture(scope="module")
def face_crop() -> torch.Tensor:
    return real_photos.to_tensor(real_photos.astronaut())[..., 20:260, 100:340].contiguous()


@pytest.mark.parametrize("quality", [60, 75, 95])
def test_differentiable_jpeg_tracks_libjpeg(face_crop: torch.Tensor, quality: int) -> None:
    real = eot.jpeg_real(face_crop, quality)
    approx = eot.jpeg_differentiable(face_crop, quality)
    err_model = float((approx - real).abs().mean())
    err_jpeg = float((real - face_crop).abs().mean())
    assert err_jpeg > 1 / 255  # JPEG really changed the pixels...
    assert err_model < 0.5 * err_jpeg  # ...and the model is much closer to it than the input


def test_straight_through_jpeg_is_exact_forward_with_a_gradient(face_crop: torch.Tensor) -> None:
    x = face_crop.clone().requires_grad_(True)
    y = eot.jpeg_straight_through(x, 75)
    assert torch.allclose(y.detach(), eot.jpeg_real(face_crop, 75), atol=1e-6)
    (g,) = torch.autograd.grad((y * torch.linspace(0, 1, y.shape[-1])).sum(), x)
    assert torch.isfinite(g).all() and float(g.abs().sum()) > 0


def test_shift_and_blur(face_crop: torch.Tensor) -> None:
    s = eot.shift(face_crop, 3, -2)
    assert s.shape == face_crop.shape
    assert torch.equal(s[..., 10:-10, 10:-10], face_crop[..., 12:-8, 7:-13])
    b = eot.gaussian_blur(face_crop, 1.0)
    assert b.shape == face_crop.shape
    assert abs(float(b.mean() - face_crop.mean())) < 1e-3
    assert float(b.diff(dim=-1).abs().mean()) < float(face_crop.diff(dim=-1).abs().mean())


def test_sampling_is_seeded_and_in_range(face_crop: torch.Tensor) -> None:
    cfg = eot.EotConfig()
    a = [eot.sample_transform(cfg, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert a[0] == a[1]
    gen = torch.Generator().manual_seed(1)
    draws = [eot.sample_transform(cfg, gen) for _ in range(50)]
    assert len(set(draws)) > 40
    for p in draws:
        assert p.jpeg_quality is None or 60 <= p.jpeg_quality <= 95
        assert 0.5 <= p.scale <= 1.0 and max(abs(v) for v in p.shift) <= cfg.max_shift
    x = face_crop.clone().requires_grad_(True)
    y = eot.apply_transform(x, eot.TransformParams(0.7, 0.6, 70, (1, 2)))
    assert y.shape == x.shape and float(y.detach().min()) >= 0 and float(y.detach().max()) <= 1
    (g,) = torch.autograd.grad(y.sum(), x)
    assert float(g.abs().sum()) > 0
    with pytest.raises(ValueError):
        eot.EotConfig(jpeg_quality=(90, 60))


def _face(x0: float, y0: float, size: float) -> Face:
    box = np.array([x0, y0, x0 + size, y0 + size], np.float32)
    lm = np.tile(box[:2] + size / 2, (5, 1)).astype(np.float32)
    return Face(box=box, landmarks5=lm)


def test_regions_merge_overlaps_and_stay_in_the_photo() -> None:
    faces = [_face(100, 100, 60), _face(170, 110, 60), _face(900, 600, 50)]
    regions = face_regions(faces, 1200, 800)
    assert sorted(r.faces for r in regions) == [(0, 1), (2,)]
    for r in regions:
        x0, y0, x1, y1 = r.box
        assert 0 <= x0 < x1 <= 1200 and 0 <= y0 < y1 <= 800 and x0 % 32 == 0 and y0 % 32 == 0
        for i, lf in zip(r.faces, r.local_faces, strict=True):
            assert np.allclose(lf.box + np.array([x0, y0, x0, y0]), faces[i].box)


def test_feathered_mask_is_soft_and_local() -> None:
    m = feathered_mask((200, 200), [_face(70, 70, 60)])[0, 0]
    assert float(m[100, 100]) == 1.0 and float(m[0, 0]) == 0.0
    ramp = m[100, 100:].numpy()
    assert np.all(np.diff(ramp) <= 1e-6)  # falls monotonically, no hard edge
    assert ((ramp > 0.05) & (ramp < 0.95)).sum() >= 5
