"""The zero-shot shield's transfer and visibility levers (ShieldOptions) and its ensemble.

Same stand-in encoder as test_layer2.py (a fixed random conv net behind a box warp) on the
astronaut photo: each lever is checked for what it promises (bounds, colour, reproducibility,
every encoder used), not for how much it protects (that is benchmarks/transfer.py's job on real
encoders).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from dladiff_app.engine.faces.align import warp_antialias_factor
from dladiff_app.engine.shield.layer2 import FIRST_RELEASE, ShieldOptions, protect_faces
from dladiff_app.engine.shield.perceptual import texture_budget
from tests.engine.test_layer2 import PLAIN, SETTINGS, BoxEncoder
from tests.engine.test_layer2 import astronaut as astronaut  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CountingEncoder(BoxEncoder):
    """The stand-in under another name, counting the embeddings it computed with grad."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.grad_calls = 0
        self.flips: list[bool] = []

    def embed(self, image, face, flip=False):  # type: ignore[no-untyped-def]
        if image.requires_grad:
            self.grad_calls += 1
            self.flips.append(flip)
        return super().embed(image, face, flip)


def test_every_encoder_of_the_ensemble_is_attacked(astronaut) -> None:  # type: ignore[no-untyped-def]
    img, faces = astronaut
    a, b = CountingEncoder("a"), CountingEncoder("b")
    res = protect_faces(img, None, faces, [a, b], PLAIN, steps=6,
                        options=ShieldOptions(one_encoder_per_step=False))
    assert a.grad_calls == 6 and b.grad_calls == 6
    assert set(res.final_similarity[0]) == {"a", "b"}
    a2, b2 = CountingEncoder("a"), CountingEncoder("b")
    protect_faces(img, None, faces, [a2, b2], PLAIN, steps=6)
    assert a2.grad_calls == 3 and b2.grad_calls == 3  # the default cycles: one per step


def test_flips_and_jitter_are_drawn_from_the_seed(astronaut) -> None:  # type: ignore[no-untyped-def]
    img, faces = astronaut
    opts = ShieldOptions(flip=0.5, jitter=0.03)
    state = torch.random.get_rng_state()
    enc = CountingEncoder("a")
    first = protect_faces(img, None, faces, [enc], SETTINGS, steps=8, options=opts)
    assert any(enc.flips) and not all(enc.flips)  # about half the steps see the mirror
    assert torch.equal(torch.random.get_rng_state(), state)  # caller's random state untouched
    again = protect_faces(img, None, faces, [CountingEncoder("a")], SETTINGS, steps=8,
                          options=opts)
    assert torch.equal(first.protected, again.protected)


def test_texture_budget_bounds_every_pixel(astronaut) -> None:  # type: ignore[no-untyped-def]
    img, faces = astronaut
    opts = replace(FIRST_RELEASE, texture_floor=0.25)
    res = protect_faces(img, None, faces, [BoxEncoder()], PLAIN, options=opts)
    share = texture_budget(img, 0.25)
    limit = torch.ceil(share * 8.0 - 1e-4) / 255 + 1e-6  # the 8-bit grid rounds the bound up
    change = (res.protected - img).abs()
    assert bool((change <= limit).all())
    # Flat pixels kept at most a quarter of the budget, and some textured ones used it all.
    assert float(change[share.expand_as(change) <= 0.25].max()) <= 2 / 255 + 1e-6
    assert float(change.max()) == pytest.approx(8 / 255, abs=1e-6)
    assert res.final_similarity[0]["standin"] < res.initial_similarity[0]["standin"] - 0.05


def test_luma_only_steps_change_the_three_channels_alike(astronaut) -> None:  # type: ignore[no-untyped-def]
    img, faces = astronaut
    res = protect_faces(img, None, faces, [BoxEncoder()], PLAIN,
                        options=replace(FIRST_RELEASE, chroma=0.0))
    d = (res.protected - img)[0]
    x0, y0, x1, y1 = (int(v) for v in faces[0].box)
    inner = d[:, y0:y1, x0:x1]
    clean = img[0, :, y0:y1, x0:x1]
    # Where no channel hit 0 or 1 the random start's colour noise is all that differs.
    free = ((clean > 9 / 255) & (clean < 1 - 9 / 255)).all(dim=0)
    spread = (inner.max(dim=0).values - inner.min(dim=0).values)[free]
    plain = protect_faces(img, None, faces, [BoxEncoder()], PLAIN,
                          options=FIRST_RELEASE).protected - img
    plain_spread = (plain[0, :, y0:y1, x0:x1].max(dim=0).values
                    - plain[0, :, y0:y1, x0:x1].min(dim=0).values)[free]
    assert float(spread.mean()) < 0.5 * float(plain_spread.mean())


def test_texture_budget_follows_local_contrast() -> None:
    flat = torch.full((1, 3, 32, 32), 0.5)
    assert torch.allclose(texture_budget(flat, 0.3), torch.full((1, 1, 32, 32), 0.3))
    assert torch.equal(texture_budget(flat, 1.0), torch.ones(1, 1, 32, 32))
    g = torch.Generator().manual_seed(0)
    busy = (torch.rand((1, 3, 32, 32), generator=g) > 0.5).float()
    assert float(texture_budget(busy, 0.3)[..., 4:-4, 4:-4].min()) == 1.0
    assert np.isfinite(texture_budget(busy, 0.3).numpy()).all()


def test_colour_jitter_changes_the_views_reproducibly(astronaut) -> None:  # type: ignore[no-untyped-def]
    img, faces = astronaut
    opts = ShieldOptions(colour_jitter=0.2)
    plain = protect_faces(img, None, faces, [BoxEncoder()], SETTINGS, steps=6,
                          options=replace(opts, colour_jitter=0.0)).protected
    a = protect_faces(img, None, faces, [BoxEncoder()], SETTINGS, steps=6, options=opts).protected
    b = protect_faces(img, None, faces, [BoxEncoder()], SETTINGS, steps=6, options=opts).protected
    assert torch.equal(a, b)
    assert not torch.equal(a, plain)
    assert float((a - img).abs().max()) <= SETTINGS.eps / 255 + 1e-6


class FactorEncoder(CountingEncoder):
    """Records the warp antialiasing in force at each embedding, with and without grad."""

    def __init__(self) -> None:
        super().__init__("a")
        self.grad_factors: list[float] = []
        self.score_factors: list[float] = []

    def embed(self, image, face, flip=False):  # type: ignore[no-untyped-def]
        seen = self.grad_factors if image.requires_grad else self.score_factors
        seen.append(warp_antialias_factor())
        return super().embed(image, face, flip)


def test_gradient_steps_see_antialiased_crops_and_scores_the_exact_one(astronaut) -> None:  # type: ignore[no-untyped-def]
    img, faces = astronaut
    enc = FactorEncoder()
    protect_faces(img, None, faces, [enc], PLAIN, steps=4, options=ShieldOptions(antialias=1.5))
    assert enc.grad_factors == [1.5] * 4
    # What the user is told is measured on the crop the real encoder takes.
    assert enc.score_factors and set(enc.score_factors) == {0.0}
    assert warp_antialias_factor() == 0.0
    first = FactorEncoder()
    protect_faces(img, None, faces, [first], PLAIN, steps=4, options=FIRST_RELEASE)
    assert first.grad_factors == [0.0] * 4


def test_the_joint_polish_takes_its_identity_gradient_through_antialiased_crops(astronaut) -> None:  # type: ignore[no-untyped-def]
    from dladiff_app.engine.shield.layer2 import clean_embeddings, exact_regions
    from dladiff_app.engine.shield.polish import PhotoIdentityTerm

    img, faces = astronaut
    enc = FactorEncoder()
    targets = clean_embeddings(img, faces, [enc])
    regions = exact_regions(img, faces, [enc], targets)
    term = PhotoIdentityTerm(regions, [enc], targets, None, torch.Generator().manual_seed(0))
    enc.grad_factors.clear()
    enc.score_factors.clear()
    grads, _ = term.gradients([img], 0)
    assert grads[0] is not None and enc.grad_factors == [ShieldOptions().antialias]
    with torch.no_grad():
        term.loss(img, None)
    assert enc.score_factors[-1] == 0.0


def test_the_optimiser_momentum_comes_from_the_options(astronaut, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from dladiff_app.engine.shield import layer2

    img, faces = astronaut
    seen: list[float | None] = []

    class SpyDriver(layer2.Driver):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            seen.append(kwargs["momentum"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(layer2, "Driver", SpyDriver)
    enc = BoxEncoder()
    protect_faces(img, None, faces, [enc], PLAIN, steps=2)
    protect_faces(img, None, faces, [enc], PLAIN, steps=2, options=FIRST_RELEASE)
    plain = protect_faces(img, None, faces, [enc], PLAIN, steps=3,
                          options=ShieldOptions(momentum=0.0))
    again = protect_faces(img, None, faces, [enc], PLAIN, steps=3,
                          options=ShieldOptions(momentum=0.0))
    heavy = protect_faces(img, None, faces, [enc], PLAIN, steps=3,
                          options=ShieldOptions(momentum=0.9))
    # Each run's driver gets the momentum of the options that run was given.
    assert seen == [ShieldOptions().momentum, FIRST_RELEASE.momentum, 0.0, 0.0, 0.9]
    assert torch.equal(plain.protected, again.protected)
    assert not torch.equal(plain.protected, heavy.protected)
