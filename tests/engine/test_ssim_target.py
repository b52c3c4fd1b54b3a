"""The face-SSIM controller of the zero-shot shield (engine/shield/ssim_target.py) and the
SSIM-shaped penalty: the torch SSIM equals the figure the app reports, the controller steers
each face to its preset's target, and the presets keep their order.

The stand-in encoder of test_layer2.py on the astronaut photo; how much the shield protects at
a target is benchmarks/transfer.py's job on real encoders.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from dladiff_app.core.presets import (
    PRESETS,
    ProtectionSettings,
    face_jnd_for_eps,
    face_ssim_for_eps,
)
from dladiff_app.core.visibility import face_visibility
from dladiff_app.engine.shield.layer2 import (
    FIRST_RELEASE,
    SSIM_RELEASE,
    ShieldOptions,
    protect_faces,
)
from dladiff_app.engine.shield.ssim_target import RATE, SsimController, SsimReference
from tests.engine.test_layer2 import PLAIN, BoxEncoder
from tests.engine.test_layer2 import astronaut as astronaut  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).numpy()


def _face_ssim(img: torch.Tensor, out: torch.Tensor, faces) -> float:  # type: ignore[no-untyped-def]
    vis = face_visibility(_hwc(img), _hwc(out), [f.box for f in faces])
    assert vis is not None
    return vis.ssim


def test_torch_ssim_is_the_reported_face_ssim(astronaut) -> None:  # type: ignore[no-untyped-def]
    img, faces = astronaut
    gen = torch.Generator().manual_seed(0)
    noisy = (img + (torch.rand(img.shape, generator=gen) - 0.5) * 8 / 255).clamp(0, 1)
    noisy = torch.round(noisy * 255) / 255
    want = _face_ssim(img, noisy, faces)
    ctl = SsimController(img, [f.box for f in faces], target=0.97)
    assert float(ctl.ssim(noisy)) == pytest.approx(want, abs=2e-5)
    assert float(SsimReference(img).ssim(img)) == pytest.approx(1.0, abs=1e-6)


def test_controller_tightens_under_the_target_and_relaxes_over_it(astronaut) -> None:  # type: ignore[no-untyped-def]
    img, faces = astronaut
    gen = torch.Generator().manual_seed(1)
    noisy = (img + (torch.rand(img.shape, generator=gen) - 0.5) * 16 / 255).clamp(0, 1)
    boxes = [f.box for f in faces]
    under = SsimController(img, boxes, target=0.999)
    over = SsimController(img, boxes, target=0.5)
    ups = [float(under.update(noisy)) for _ in range(3)]
    downs = [float(over.update(noisy)) for _ in range(3)]
    assert ups[0] > 1.0 and ups[2] > ups[1] > ups[0]
    assert downs[0] < 1.0 and downs[2] < downs[1] < downs[0]
    # Gradual: no update moves the weight by more than its documented rate.
    steps = [ups[0], ups[1] / ups[0], ups[2] / ups[1], 1 / downs[0], downs[0] / downs[1]]
    assert all(1.0 < r <= np.exp(RATE) * (1 + 1e-5) for r in steps), steps
    # Bounded: however long the face stays under its target, the weight stops growing.
    weights = [float(under.update(noisy)) for _ in range(200)]
    assert np.isfinite(weights[-1]) and weights[-1] == weights[-2] > ups[2]
    # Faces too small to measure (under 11 px widened) leave the weight as it is.
    tiny = SsimController(img, [np.array([10.0, 10.0, 14.0, 14.0])], target=0.999)
    assert float(tiny.update(noisy)) == 1.0


@pytest.mark.parametrize("penalty", [0.0, 0.5])
def test_the_shield_ends_at_its_face_ssim_target(astronaut, penalty: float) -> None:  # type: ignore[no-untyped-def]
    img, faces = astronaut
    opts = replace(SSIM_RELEASE, ssim_penalty=penalty)
    got = {}
    for target in (0.96, 0.985):
        settings = PLAIN.with_overrides(face_ssim=target)
        res = protect_faces(img, None, faces, [BoxEncoder()], settings, steps=80, options=opts)
        got[target] = _face_ssim(img, res.protected, faces)
        assert float((res.protected - img).abs().max()) <= 8 / 255 + 1e-6
    assert got[0.96] == pytest.approx(0.96, abs=0.004)
    assert got[0.985] == pytest.approx(0.985, abs=0.004)


def test_without_the_controller_the_weight_is_fixed(astronaut) -> None:  # type: ignore[no-untyped-def]
    img, faces = astronaut
    fixed = replace(SSIM_RELEASE, face_ssim_control=False, ssim_penalty=0.0)
    a = protect_faces(img, None, faces, [BoxEncoder()], PLAIN.with_overrides(face_ssim=0.95),
                      steps=20, options=fixed)
    b = protect_faces(img, None, faces, [BoxEncoder()], PLAIN.with_overrides(face_ssim=0.99),
                      steps=20, options=fixed)
    assert torch.equal(a.protected, b.protected)  # the target is not read
    # The first release's options do not read the target either.
    first = [protect_faces(img, None, faces, [BoxEncoder()], PLAIN.with_overrides(face_ssim=t),
                           steps=20, options=FIRST_RELEASE).protected for t in (0.95, 0.99)]
    assert torch.equal(first[0], first[1])


def test_face_ssim_targets_by_budget() -> None:
    # The SSIM-held shield's targets (SSIM_RELEASE): a stronger budget may change more, never
    # so much that the face stops looking like itself, and each preset holds its own budget's.
    targets = [face_ssim_for_eps(e) for e in range(1, 33)]
    assert all(a >= b for a, b in zip(targets, targets[1:], strict=False)), targets
    assert targets[0] > targets[-1] and targets[-1] >= 0.9 and targets[0] <= 0.995
    for preset in PRESETS.values():
        assert preset.face_ssim_target == face_ssim_for_eps(preset.eps)
    assert ProtectionSettings(eps=6, face_ssim=0.99).face_ssim_target == 0.99
    with pytest.raises(ValueError, match="face_ssim"):
        ProtectionSettings(face_ssim=1.0)


def test_presets_promise_ordered_visibility() -> None:
    low, medium, high = (PRESETS[n] for n in ("low", "medium", "high"))
    # Low and Medium are not visible at 100% (under 1 JND); High is the strong option.
    assert low.face_jnd_target < medium.face_jnd_target <= 1.0 < high.face_jnd_target
    # A custom budget between two presets' gets a target between theirs, rising with it.
    for a, b in ((low, medium), (medium, high)):
        assert face_jnd_for_eps(a.eps) == a.face_jnd_target
        assert face_jnd_for_eps(b.eps) == b.face_jnd_target
        middle = face_jnd_for_eps((a.eps + b.eps) / 2)
        assert a.face_jnd_target < middle < b.face_jnd_target
    assert face_jnd_for_eps(8) < face_jnd_for_eps(12) < face_jnd_for_eps(16)
    assert face_jnd_for_eps(1) >= 0.5 and face_jnd_for_eps(32) <= 10.0
    assert ProtectionSettings(eps=6, face_jnd=0.9).face_jnd_target == 0.9
    with pytest.raises(ValueError, match="face_jnd"):
        ProtectionSettings(face_jnd=0.0)


def test_ssim_penalty_is_ssims_own_gradient_inside_the_face_boxes(astronaut) -> None:  # type: ignore[no-untyped-def]
    from dladiff_app.engine.shield.face_term import RegionPixels, perceptual_gradient
    from dladiff_app.engine.shield.perceptual import texture_budget

    img, faces = astronaut
    gen = torch.Generator().manual_seed(2)
    noisy = (img + (torch.rand(img.shape, generator=gen) - 0.5) * 8 / 255).clamp(0, 1)
    ctl = SsimController(img, [f.box for f in faces], target=0.97)
    value, sp = ctl.measure(noisy)
    inside = ctl.inside
    assert float(value) == pytest.approx(float(ctl.ssim(noisy)))
    assert float(sp.abs().sum()) > 0
    assert float((sp * (1 - inside)).abs().max()) == 0.0  # nothing outside the face boxes
    # Descending the penalty's direction gives the face back its SSIM.
    assert float(ctl.ssim(noisy - 1e-3 * sp / sp.abs().max())) > float(value)
    px = RegionPixels(img, texture_budget(img, 0.25), torch.ones_like(img[:, :1]))
    grad = torch.randn(img.shape, generator=gen)
    plain = perceptual_gradient(grad, noisy, px, 8 / 255, ShieldOptions(ssim_penalty=0.0),
                                None, (sp, inside))
    shaped = perceptual_gradient(grad, noisy, px, 8 / 255, ShieldOptions(ssim_penalty=0.5),
                                 None, (sp, inside))
    assert not torch.equal(plain * inside, shaped * inside)
