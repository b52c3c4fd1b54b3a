"""The zero-shot shield's visibility promise and its stopping rule.

Same stand-in encoder as test_layer2.py on the astronaut photo. The cap must hold the face's
predicted visibility (engine.visible_diff, measured independently here on the returned photo)
at or under the target whatever the optimiser did; the stopping rule must stop a face once
every encoder is past its line by the margin, and not before.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from dladiff_app.engine.shield import face_term
from dladiff_app.engine.shield.jnd_target import cap_faces
from dladiff_app.engine.shield.layer2 import ShieldOptions, protect_faces
from dladiff_app.engine.visible_diff import face_jnd
from tests.engine.test_layer2 import SETTINGS, BoxEncoder
from tests.engine.test_layer2 import astronaut as astronaut  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_visibility_cap_holds_on_the_returned_photo(astronaut) -> None:  # type: ignore[no-untyped-def]
    img, faces = astronaut
    box = [float(v) for v in faces[0].box]
    loose = protect_faces(img, None, faces, [BoxEncoder()], SETTINGS, steps=10,
                          options=ShieldOptions(jnd_cap=False))
    seen_loose = face_jnd(img, loose.protected, [box])
    assert seen_loose is not None and seen_loose > 1.2  # uncapped, the change is visible
    target = 0.6
    capped = protect_faces(img, None, faces, [BoxEncoder()],
                           replace(SETTINGS, face_jnd=target), steps=10,
                           options=ShieldOptions(jnd_cap=True))
    seen = face_jnd(img, capped.protected, [box])
    assert seen is not None and seen <= target + 0.02
    # Capped, not erased: the face still changed, on the 8-bit grid, inside the budget.
    diff = (capped.protected - img).abs()
    assert float(diff.max()) > 0 and float(diff.max()) <= SETTINGS.eps / 255 + 1e-6
    assert torch.equal(torch.round(capped.protected * 255) / 255, capped.protected)


def test_a_face_past_every_line_by_the_margin_stops(astronaut, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    img, faces = astronaut
    monkeypatch.setattr(face_term, "STOP_FROM", 4)
    monkeypatch.setattr(face_term, "STOP_EVERY", 2)
    calls = {"n": 0}

    class Counting(BoxEncoder):
        threshold = 0.99  # any change puts the stand-in past this "line"

        def embed(self, image, face, flip=False):  # type: ignore[no-untyped-def]
            if image.requires_grad:
                calls["n"] += 1
            return super().embed(image, face, flip)

    opts = ShieldOptions(stop_margin=0.0, jnd_cap=False)
    res = protect_faces(img, None, faces, [Counting()], SETTINGS, steps=20, options=opts)
    assert res.steps_done == 20  # the loop runs on (progress), without work
    (stop,) = res.stopped_at
    # Stopped at a check (every 2 steps from step 4), and no gradient was taken after it.
    assert stop is not None and 4 <= stop < 20 and stop % 2 == 0
    assert calls["n"] == stop
    # A line no change can pass: the face is never stopped.
    calls["n"] = 0

    class Strict(Counting):
        threshold = -1.0

    protect_faces(img, None, faces, [Strict()], SETTINGS, steps=8, options=opts)
    assert calls["n"] == 8


def test_cap_faces_keeps_a_later_pass_under_the_target(astronaut) -> None:  # type: ignore[no-untyped-def]
    """What the joint polish calls: a face the zero-shot shield left under its target stays
    under it after a pass on the whole photo; a face already over it is left as it was."""
    img, faces = astronaut
    box = tuple(float(v) for v in faces[0].box[:4])
    g = torch.Generator().manual_seed(4)
    before = torch.round((img + (torch.rand(img.shape, generator=g) * 2 - 1) / 255)
                         .clamp(0, 1) * 255) / 255
    after = torch.round((before + (torch.rand(img.shape, generator=g) * 2 - 1) * 8 / 255)
                        .clamp(0, 1) * 255) / 255
    seen_before, seen_after = (face_jnd(img, x, [box]) for x in (before, after))
    assert seen_before is not None and seen_after is not None
    target = seen_before + 0.3
    assert seen_after > target + 0.5
    out = cap_faces(img, before, after, [box], target)
    seen = face_jnd(img, out, [box])
    assert seen is not None and seen <= target + 0.02
    assert not torch.equal(out, before)  # blended back, not erased
    assert torch.equal(torch.round(out * 255) / 255, out)
    # Already over the target before the pass: nothing to keep, the pass is left as it was.
    assert torch.equal(cap_faces(img, before, after, [box], seen_before - 0.2), after)
