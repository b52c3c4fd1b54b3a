"""The visible-difference model: it must rank changes the way the eye does on a real face.

The anchors are facts of vision the model is built to reproduce, checked on a real photo
(scikit-image's astronaut, a face at 100%): fine random noise of one or two levels is not seen,
while a smooth luma blotch of the same peak size is seen more easily than noise; texture hides
a change that flat areas show; colour changes are seen less than luminance changes of the same
size; and the figure grows with the size of the change.
"""

from __future__ import annotations

import pytest
import torch

from dladiff_app.engine.shield.jnd_target import JndController
from dladiff_app.engine.visible_diff import VisibleDifference, face_jnd

skimage_data = pytest.importorskip("skimage.data")

# The astronaut's face box (x0, y0, x1, y1) in scikit-image's 512x512 photo, widened 1.5x
# by the measure itself.
FACE = (178.5, 82.5, 266.5, 170.5)


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    return torch.from_numpy(skimage_data.astronaut()).permute(2, 0, 1)[None].float() / 255.0


def _q(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.clamp(0, 1) * 255) / 255


def _noise(shape: tuple[int, ...], levels: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) * 2 - 1) * levels / 255


def _blotch(shape: tuple[int, ...], levels: float, sigma: float = 4.0, seed: int = 0
            ) -> torch.Tensor:
    """A smooth random luma pattern (grey, all channels alike) with peak ``levels``/255."""
    from dladiff_app.engine.faces.align import gaussian_blur

    g = torch.Generator().manual_seed(seed)
    n = gaussian_blur(torch.randn((1, 1, *shape[-2:]), generator=g), sigma)
    return (n / n.abs().max() * levels / 255).expand(shape)


def test_identical_is_invisible_and_the_figure_grows_with_the_change(astronaut):
    assert face_jnd(astronaut, astronaut, [FACE]) == pytest.approx(0.0, abs=2e-3)
    figures = [face_jnd(astronaut, _q(astronaut + _noise(astronaut.shape, a)), [FACE])
               for a in (1, 2, 4, 8)]
    assert all(b > a for a, b in zip(figures, figures[1:], strict=False)), figures


def test_one_level_noise_is_not_seen_and_a_crease_of_a_few_levels_is(astronaut):
    assert face_jnd(astronaut, _q(astronaut + _noise(astronaut.shape, 1)), [FACE]) < 1.0
    # A thin dark line across the cheek (3 px wide, 6 levels): the kind of crease a user sees.
    creased = astronaut.clone()
    creased[..., 150:153, 200:260] -= 6 / 255
    assert face_jnd(astronaut, _q(creased), [FACE]) > 1.0
    # An 8-level smooth blotch over the face is seen; noise of the same peak is seen less
    # per level of its size than its mean square would say (masking by the skin texture).
    blotch = face_jnd(astronaut, _q(astronaut + _blotch(astronaut.shape, 8)), [FACE])
    assert blotch > 1.0


def test_texture_masks_a_change_that_flat_skin_shows():
    flat = torch.full((1, 3, 96, 96), 0.6)
    # Texture at the scale of the change (hair, stubble): it hides the change, flat skin not.
    textured = (flat + _blotch(flat.shape, 40, sigma=1.5, seed=1)).clamp(0, 1)
    change = _blotch(flat.shape, 3, sigma=1.5, seed=2)
    on_flat = VisibleDifference(flat).score(flat + change)
    on_texture = VisibleDifference(textured).score(textured + change)
    assert float(on_texture) < 0.6 * float(on_flat)


def test_colour_is_seen_less_than_luminance_of_the_same_size():
    base = torch.full((1, 3, 96, 96), 0.5)
    pattern = _blotch(base.shape, 4, sigma=1.5)[:, :1]
    luma = base + pattern.expand(1, 3, 96, 96)
    # Red up, green down: nearly the same luminance, a red-green change.
    colour = base + torch.cat([pattern, -pattern * 0.299 / 0.587, torch.zeros_like(pattern)], 1)
    model = VisibleDifference(base)
    assert float(model.score(colour)) < 0.5 * float(model.score(luma))


def test_the_figure_is_differentiable_and_stays_in_float32(astronaut):
    crop = astronaut[..., 40:220, 150:310]
    model = VisibleDifference(crop)
    x = (crop + _noise(crop.shape, 3)).requires_grad_(True)
    value = model.score(x)
    assert value.dtype == torch.float32
    (grad,) = torch.autograd.grad(value, x)
    assert grad.dtype == torch.float32 and grad.abs().sum() > 0


def test_the_controller_s_gradient_points_to_more_visible_and_its_scale_tones_down(astronaut):
    crop = astronaut[..., 40:230, 140:320].contiguous()
    box = (30.0, 20.0, 150.0, 160.0)
    ctl = JndController(crop, [box], target=0.9)
    x = _q(crop + _blotch(crop.shape, 6) + _noise(crop.shape, 3))
    before, grad = ctl.value(x), ctl.gradient(x)
    # A small step against the gradient lowers the face's figure; along it raises it.
    step = 1.0 / 255 * torch.sign(grad)
    assert float(ctl.value(x - step)) < float(before) < float(ctl.value(x + step))
    # Where the face is over the target the change is toned down, elsewhere it is kept.
    assert float(before) > 0.9
    scale = ctl.local_scale(x)
    assert float(scale.min()) < 1.0 and float(scale.max()) == 1.0
    assert float(ctl.value(crop + (x - crop) * scale)) < float(before)

