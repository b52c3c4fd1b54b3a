"""Hold every face at or under the visibility its preset promises, as the eye would judge it.

:class:`JndController` wraps the visible-difference model (:mod:`engine.visible_diff`) for one
face region of the zero-shot shield: the worst face's figure at 100% (in JND, the figure the app
reports); the gradient of a smooth version of it (the faces' JND maps pooled with a high
Minkowski exponent, so the most visible spots weigh most), which the shield's penalty follows
inside the face boxes, so the change leaves smooth skin and the frequencies the eye is most
sensitive to and goes where texture masks it; and a per-pixel factor that tones the change
down where the map is over the target. :func:`capped` and :func:`cap_faces` hold the promise on
the file as written: after the shield, and after the joint polish.

Tensor contract: region crops (1, 3, h, w) float32 RGB in [0, 1]; boxes are (x0, y0, x1, y1)
slice bounds in the crop; everything stays on the crop's device (the cap's bisection reads its
figure back once per step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dladiff_app.core.visibility import widened_box
from dladiff_app.engine.visible_diff import FACE_CONTEXT as CONTEXT
from dladiff_app.engine.visible_diff import VisibleDifference

# Minkowski exponent of the smooth figure whose gradient the penalty follows.
SMOOTH_P = 8.0
MIN_SIDE = 16


class JndController:
    """The visibility of one region's faces against its clean crop ``clean``, and the target
    ``target`` (JND) they are held at or under. ``boxes``: the faces' detector boxes in the
    region's coordinates (widened 1.5x as the app measures; those under 16 px are not
    measured). ``inside``: (1, 1, h, w) mask of the measured boxes."""

    def __init__(self, clean: torch.Tensor, boxes: Sequence[Sequence[float]],
                 target: float) -> None:
        h, w = clean.shape[-2:]
        self.target = float(target)
        self.parts: list[tuple[tuple[int, int, int, int], VisibleDifference, torch.Tensor]] = []
        self.inside = clean.new_zeros((1, 1, h, w))
        for b in boxes:
            x0, y0, x1, y1 = widened_box(b, w, h)
            if x1 - x0 < MIN_SIDE or y1 - y0 < MIN_SIDE:
                continue
            cx0, cy0 = max(0, x0 - CONTEXT), max(0, y0 - CONTEXT)
            cx1, cy1 = min(w, x1 + CONTEXT), min(h, y1 + CONTEXT)
            model = VisibleDifference(clean[..., cy0:cy1, cx0:cx1])
            mask = clean.new_zeros((1, 1, cy1 - cy0, cx1 - cx0))
            mask[..., y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0] = 1.0
            self.parts.append(((cx0, cy0, cx1, cy1), model, mask))
            self.inside[..., y0:y1, x0:x1] = 1.0

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """The worst face's figure of ``x`` (0-d JND; 0 without a measured face)."""
        worst = x.new_zeros(())
        for (x0, y0, x1, y1), model, mask in self.parts:
            worst = torch.maximum(worst, model.score(x[..., y0:y1, x0:x1], mask))
        return worst

    def local_scale(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 1, h, w) factor in (0, 1] on the change at each pixel that brings the faces'
        visibility map to at most ``target`` where it is over (1 elsewhere, and outside
        the measured crops): the figure grows in proportion to the change, so a visible spot is
        toned down where it is seen, and the change the eye does not see elsewhere is kept."""
        scale = x.new_ones((1, 1, *x.shape[-2:]))
        with torch.no_grad():
            for (x0, y0, x1, y1), model, _ in self.parts:
                jmap = model.jnd_map(x[..., y0:y1, x0:x1])
                part = (self.target / jmap.clamp_min(1e-6)).clamp(max=1.0)
                scale[..., y0:y1, x0:x1] = torch.minimum(scale[..., y0:y1, x0:x1], part)
        return scale

    def gradient(self, x: torch.Tensor) -> torch.Tensor:
        """The gradient of the faces' smooth visibility at ``x`` (zero outside the measured
        crops): the direction that makes the change more visible, which the penalty's descent
        goes against (the sign convention of :meth:`ssim_target.SsimController.measure`, whose
        cost is the lost SSIM)."""
        if not self.parts:
            return torch.zeros_like(x)
        leaf = x.detach().requires_grad_(True)
        smooth = x.new_zeros(())
        with torch.enable_grad():
            for (x0, y0, x1, y1), model, mask in self.parts:
                jmap = model.jnd_map(leaf[..., y0:y1, x0:x1])
                inside = jmap.flatten()[mask.flatten() > 0]
                smooth = smooth + inside.pow(SMOOTH_P).mean().pow(1.0 / SMOOTH_P)
            return torch.autograd.grad(smooth, leaf)[0]


# Bisection steps of the cap: the blend factor is found to 1/2^CAP_STEPS.
CAP_STEPS = 7


def capped(start: torch.Tensor, result: torch.Tensor, ctl: JndController) -> torch.Tensor:
    """``result`` (a region crop on the 8-bit grid), or, when its most visible face is over
    ``ctl.target``, the largest blend ``start + t * (result - start)`` (rounded to the grid)
    that is not: the visibility promise holds on the file as written, whatever the optimiser
    reached. ``start``: the crop before the zero-shot shield (the clean photo, or layer 1's
    result). Measured against ``ctl``'s clean crop; one host read per bisection step."""
    def blend(t: float) -> torch.Tensor:
        return torch.round((start + t * (result - start)) * 255.0) / 255.0

    with torch.no_grad():
        if not ctl.parts or float(ctl.value(result)) <= ctl.target:
            return result
        lo, hi = 0.0, 1.0
        for _ in range(CAP_STEPS):
            mid = (lo + hi) / 2
            if float(ctl.value(blend(mid))) <= ctl.target:
                lo = mid
            else:
                hi = mid
        return blend(lo)


def cap_faces(clean: torch.Tensor, before: torch.Tensor, after: torch.Tensor,
              boxes: Sequence[Sequence[float]], target: float) -> torch.Tensor:
    """``after`` with each face's change since ``before`` blended back (:func:`capped`) where
    that face, against ``clean``, is over ``target`` JND and ``before`` was not: a later pass
    on the whole photo (the joint polish) keeps the visibility the zero-shot shield promised.
    All (1, 3, H, W) [0, 1] on the 8-bit grid; boxes (x0, y0, x1, y1) in the photo's pixels."""
    h, w = clean.shape[-2:]
    out = after.clone()
    for box in boxes:
        x0, y0, x1, y1 = widened_box(box, w, h)
        cx0, cy0 = max(0, x0 - 2 * CONTEXT), max(0, y0 - 2 * CONTEXT)
        cx1, cy1 = min(w, x1 + 2 * CONTEXT), min(h, y1 + 2 * CONTEXT)
        local = (box[0] - cx0, box[1] - cy0, box[2] - cx0, box[3] - cy0)
        ctl = JndController(clean[..., cy0:cy1, cx0:cx1], [local], target)
        crop = (..., slice(cy0, cy1), slice(cx0, cx1))
        if float(ctl.value(before[crop])) > target:
            continue
        out[crop] = capped(before[crop], out[crop], ctl)
    return out
