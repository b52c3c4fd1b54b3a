"""Zero-shot shield (layer 2) machinery: budget, region, determinism, progress, cancel, groups.

The encoder here is a small differentiable stand-in (a fixed random conv net behind a box-aligned
bilinear warp): it exercises the PGD/EOT/mask machinery on real photos in seconds. The real
encoders are tested in test_layer2_dlib.py and test_layer2_onnx.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import Cancelled
from dladiff_app.core.presets import ProtectionSettings
from dladiff_app.engine.faces.types import Face
from dladiff_app.engine.shield.layer2 import NO_FACE_WARNING, layer2_loss, protect_faces
from tests.engine import real_photos

pytestmark = pytest.mark.usefixtures("one_torch_thread")



class BoxEncoder(torch.nn.Module):
    """Stand-in identity encoder: bilinear warp of the face box (x1.2) to 40x40, then a fixed
    random conv net -> 32-d. Differentiable, aligned by the face's own coordinates."""

    name = "standin"
    metric = "cosine"
    threshold = 0.5

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1234)
        self.w1 = torch.randn(16, 3, 5, 5, generator=g) * 0.2
        self.w2 = torch.randn(32, 16, 3, 3, generator=g) * 0.2
        self.fc = torch.randn(32 * 16 * 16, 32, generator=g) * 0.02

    def embed(self, image: torch.Tensor, face: Face, flip: bool = False) -> torch.Tensor:
        h, w = image.shape[-2:]
        x0, y0, x1, y1 = (float(v) for v in face.box)
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * 0.6
        # Normalised coordinates of the box, align_corners=False convention.
        sx, sy = 2 * half / w, 2 * half / h
        tx, ty = (2 * cx + 1) / w - 1, (2 * cy + 1) / h - 1
        theta = torch.tensor([[[sx, 0.0, tx], [0.0, sy, ty]]], dtype=image.dtype)
        grid = F.affine_grid(theta, [1, 3, 40, 40], align_corners=False)
        chip = F.grid_sample(image, grid, mode="bilinear", align_corners=False)
        chip = chip.flip(-1) if flip else chip
        # Contrast-normalised input and centred features: like a real face encoder, the
        # embedding depends on the face's structure, not its mean colour.
        chip = (chip - chip.mean()) / (chip.std() + 1e-3)
        z = F.max_pool2d(torch.relu(F.conv2d(chip, self.w1)), 2)
        z = F.conv2d(z, self.w2)
        z = z - z.mean(dim=(2, 3), keepdim=True)
        return z.flatten() @ self.fc


def _photo(path_or_array: Path | np.ndarray) -> torch.Tensor:
    arr = np.asarray(Image.open(path_or_array).convert("RGB")) if isinstance(
        path_or_array, Path) else path_or_array
    return torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


def _dlib_faces(image: torch.Tensor) -> list[Face]:
    import dlib

    arr = np.ascontiguousarray((image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    faces = []
    for r in dlib.get_frontal_face_detector()(arr, 1):
        box = np.array([r.left(), r.top(), r.right(), r.bottom()], dtype=np.float32)
        cx, cy, s = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0]
        lm = np.array([[cx - 0.2 * s, cy - 0.1 * s], [cx + 0.2 * s, cy - 0.1 * s], [cx, cy + 0.1 * s],
                       [cx - 0.15 * s, cy + 0.25 * s], [cx + 0.15 * s, cy + 0.25 * s]], np.float32)
        faces.append(Face(box=box, landmarks5=lm))
    return faces


@pytest.fixture(scope="module")
def astronaut() -> tuple[torch.Tensor, list[Face]]:
    from skimage import data

    img = _photo(data.astronaut())
    faces = [f for f in _dlib_faces(img) if f.box[1] < 200]  # the astronaut's own face
    assert len(faces) == 1
    return img, faces


# A visibility target the stand-in's mechanics tests do not reach (the promise itself is
# test_layer2_visibility.py's).
SETTINGS = ProtectionSettings(eps=8.0, layer2_steps=12, seed=3, face_jnd=6.0)
# The stand-in is far smoother than a real face encoder, so EOT slows it down a lot; the effect
# tests run without EOT (the EOT path is covered by the determinism and cancel tests).
PLAIN = SETTINGS.with_overrides(eot=False)


def test_budget_region_and_effect(astronaut: tuple[torch.Tensor, list[Face]]) -> None:
    img, faces = astronaut
    enc = BoxEncoder()
    res = protect_faces(img, None, faces, [enc], PLAIN)
    p = res.protected
    assert p.shape == img.shape and p.dtype == torch.float32
    assert float((p - img).abs().max()) <= 8 / 255 + 1e-6
    # The file really changed in the face, and the stand-in identity moved.
    x0, y0, x1, y1 = (int(v) for v in faces[0].box)
    assert float((p - img)[..., y0:y1, x0:x1].abs().mean()) > 2 / 255
    assert res.initial_similarity[0]["standin"] > 0.95
    assert res.final_similarity[0]["standin"] < res.initial_similarity[0]["standin"] - 0.1
    # Already on the 8-bit grid: writing the file changes nothing.
    assert torch.equal(torch.round(p * 255) / 255, p)
    # Far from the face (bottom-right quarter, the left edge) the photo is untouched.
    assert torch.equal(p[..., 300:, 300:], img[..., 300:, 300:])
    assert torch.equal(p[..., :, :20], img[..., :, :20])
    assert res.steps_done == 12 and len(res.regions) == 1


def test_start_is_kept_outside_the_mask(astronaut: tuple[torch.Tensor, list[Face]]) -> None:
    img, faces = astronaut
    g = torch.Generator().manual_seed(0)
    layer1 = (img + (torch.rand(img.shape, generator=g) * 2 - 1) * 6 / 255).clamp(0, 1)
    layer1 = torch.round(layer1 * 255) / 255
    res = protect_faces(img, layer1, faces, [BoxEncoder()], SETTINGS, steps=3)
    p = res.protected
    # The zero-shot ball is around layer 1's result: the two budgets add up on the face.
    assert float((p - layer1).abs().max()) <= 8 / 255 + 1e-6
    assert float((p - img).abs().max()) > 8 / 255
    (x0, y0, x1, y1), = res.regions
    outside = torch.ones_like(p, dtype=torch.bool)
    outside[..., y0:y1, x0:x1] = False
    assert torch.equal(p[outside], layer1[outside])
    # Inside the crop but beyond the feathered ellipse, too: the crop corner.
    assert torch.equal(p[..., y0:y0 + 8, x0:x0 + 8], layer1[..., y0:y0 + 8, x0:x0 + 8])


def test_deterministic_for_a_seed(astronaut: tuple[torch.Tensor, list[Face]]) -> None:
    img, faces = astronaut
    a = protect_faces(img, None, faces, [BoxEncoder()], SETTINGS, steps=4)
    b = protect_faces(img, None, faces, [BoxEncoder()], SETTINGS, steps=4)
    c = protect_faces(img, None, faces, [BoxEncoder()], SETTINGS, steps=4, generator_seed=99)
    assert torch.equal(a.protected, b.protected)
    assert not torch.equal(a.protected, c.protected)


def test_progress_and_cancel(astronaut: tuple[torch.Tensor, list[Face]]) -> None:
    img, faces = astronaut
    seen: list[tuple[int, int]] = []
    token = CancelToken()

    def on_progress(done: int, total: int) -> None:
        seen.append((done, total))
        if done == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        protect_faces(img, None, faces, [BoxEncoder()], SETTINGS, steps=10, cancel=token,
                      progress=on_progress)
    assert seen == [(1, 10), (2, 10), (3, 10)]


def test_no_face_is_skipped_with_a_warning(astronaut: tuple[torch.Tensor, list[Face]]) -> None:
    img, _ = astronaut
    res = protect_faces(img, None, [], [BoxEncoder()], SETTINGS)
    assert res.warnings == (NO_FACE_WARNING,) and res.steps_done == 0
    assert torch.equal(res.protected, img)


def test_rejects_a_start_outside_the_pixel_range(
        astronaut: tuple[torch.Tensor, list[Face]]) -> None:
    img, faces = astronaut
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        protect_faces(img, img + 20 / 255, faces, [BoxEncoder()], SETTINGS)


def test_group_photo_protects_every_face() -> None:
    img = _photo(real_photos.t1_path())
    faces = _dlib_faces(img)
    assert len(faces) >= 5
    res = protect_faces(img, None, faces, [BoxEncoder()], PLAIN, steps=8)
    assert float((res.protected - img).abs().max()) <= 8 / 255 + 1e-6
    assert len(res.final_similarity) == len(faces)
    for before, after in zip(res.initial_similarity, res.final_similarity, strict=True):
        assert after["standin"] < before["standin"] - 0.05
    # Regions never overlap, so no pixel is optimised twice.
    boxes = res.regions
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_loss_is_differentiable_on_the_full_photo(
        astronaut: tuple[torch.Tensor, list[Face]]) -> None:
    img, faces = astronaut
    enc = BoxEncoder()
    target = [{"standin": enc.embed(img, faces[0]).detach()}]
    x = img.clone().requires_grad_(True)
    loss = layer2_loss(x, faces, [enc], target)
    assert abs(float(loss.detach()) - 1.0) < 1e-5
    # The clean photo is the maximum of the similarity: its gradient vanishes there (why PGD
    # must start from a random point of the ball)...
    (g0,) = torch.autograd.grad(loss, x)
    assert float(g0.abs().max()) < 1e-6
    # ...and away from it the gradient reaches the face pixels and nothing far from the face.
    g = torch.Generator().manual_seed(0)
    x = (img + (torch.rand(img.shape, generator=g) - 0.5) * 8 / 255).requires_grad_(True)
    (g1,) = torch.autograd.grad(layer2_loss(x, faces, [enc], target), x)
    x0, y0, x1, y1 = (int(v) for v in faces[0].box)
    assert float(g1[..., y0:y1, x0:x1].abs().sum()) > 0
    assert float(g1[..., 300:, 300:].abs().sum()) == 0.0
