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


def _big_photo_and_face() -> tuple[np.ndarray, Face]:
    """The astronaut upscaled 4x (2048 px, above the 1080 px a platform keeps), her face."""
    from PIL import Image

    small = real_photos.as_uint8(real_photos.astronaut())
    big = np.asarray(Image.fromarray(small).resize((2048, 2048), Image.Resampling.LANCZOS),
                     dtype=np.float32) / 255.0
    box = np.array([165.5, 70.5, 253.5, 158.5]) * 4  # the face box of the 512 px photo
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    lm = np.array([[cx - 60, cy - 40], [cx + 60, cy - 40], [cx, cy],
                   [cx - 45, cy + 80], [cx + 45, cy + 80]])
    return big, Face(box=box, landmarks5=lm)


def test_shared_view_lines_up_with_the_shared_photo() -> None:
    """The 'shared' view of a face crop is the same picture, on the same pixel grid, as the
    corresponding window of the whole photo downscaled to 1080 px and JPEG-compressed (up to
    the resampling filter: torch's antialiased bilinear vs Pillow's Lanczos)."""
    from dladiff_app.core.quality import simulate_sharing
    from dladiff_app.engine.shield import face_views as fv
    from dladiff_app.engine.shield.face_region import shift_face

    big, face = _big_photo_and_face()
    x0, y0, x1, y1 = 512, 160, 1184, 832
    crop = fv.FaceCrop(box=(0, 0, x1 - x0, y1 - y0), origin=(x0, y0),
                       face=shift_face(face, x0, y0), work_scale=fv.work_scale(face),
                       share_scale=fv.share_scale(2048, 2048))
    x = real_photos.to_tensor(big)[..., y0:y1, x0:x1]
    view, vface = fv.make_view(x, crop, fv.ViewDraw("shared", transform=eot.TransformParams(
        jpeg_quality=75)))
    shared = simulate_sharing(big)
    s = crop.share_scale
    # Where the view's top-left pixel sits in the shared photo (a multiple of 16: JPEG blocks).
    j0, i0 = round(face.box[0] * s - vface.box[0]), round(face.box[1] * s - vface.box[1])
    assert j0 % 16 == 0 and i0 % 16 == 0
    n_y, n_x = view.shape[-2:]
    ref = torch.from_numpy(shared[i0 : i0 + n_y, j0 : j0 + n_x]).permute(2, 0, 1)[None]
    err = float((view - ref).abs().mean())
    off = float((view[..., :, 1:] - ref[..., :, :-1]).abs().mean())
    assert err < 0.008 and err < 0.5 * off, (err, off)
    # The face in view coordinates is the face of the photo scaled by 1080 / 2048.
    assert np.allclose((vface.box[2] - vface.box[0]), (face.box[2] - face.box[0]) * s, rtol=0.01)


def test_views_of_a_big_face_are_computed_at_the_encoders_scale() -> None:
    from dladiff_app.engine.shield import face_views as fv
    from dladiff_app.engine.shield.face_region import shift_face

    big, face = _big_photo_and_face()
    crop = fv.FaceCrop(box=(0, 0, 1024, 1024), origin=(320, 0), face=shift_face(face, 320, 0),
                       work_scale=fv.work_scale(face), share_scale=1.0)
    x = real_photos.to_tensor(big)[..., 0:1024, 320:1344].requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    sizes = set()
    for _ in range(6):
        draw = fv.draw_view(gen, eot.EotConfig(), p_shared=0.0, p_saved=0.5)
        view, vface = fv.make_view(x, crop, draw)
        side = float(vface.box[2] - vface.box[0])
        assert side <= fv.WORK_FACE_PX + 1 and max(view.shape[-2:]) <= 1024 * 256 / 352 + 2
        sizes.add(view.shape[-1])
        (g,) = torch.autograd.grad(view.mean(), x)
        assert float(g.abs().sum()) > 0  # the full-resolution crop gets the gradient
    assert len(sizes) > 1  # random views come at random scales
