"""The identity term of the objective: layer 2's "every face's embedding away from its own",
seen through the views a shared photo goes through, as a :class:`driver.Term`.

Variables are the face regions' crops (see ``layer2.protect_faces``). Each step draws one view
for all faces (``face_views.draw_view``: the saved file, the shared file, or a random sharing
transformation), one mirror coin, and the encoders on (one per step, or all); each face is then
looked at through its own small crop at the scale its encoder needs, with jittered landmarks.
The gradient is reshaped for visibility (``ShieldOptions``: optional blur, chroma scaling, the
soft budget penalty) before the driver takes its sign. Nothing is read back to the host.

Tensor contract: each variable is a region crop (1, 3, h, w) float32 RGB in [0, 1]; the
region's clean crop, texture share map and feathered mask have that shape; embeddings are (D,).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from dladiff_app.engine.device import accumulate_dtype
from dladiff_app.engine.faces.align import antialiased_warps, gaussian_blur
from dladiff_app.engine.faces.gradient_decay import residual_gradient_decay
from dladiff_app.engine.faces.types import IdentityEncoder
from dladiff_app.engine.shield.eot import EotConfig, TransformParams
from dladiff_app.engine.shield.face_region import FaceRegion, jitter_face
from dladiff_app.engine.shield.face_views import (
    SHARED_JPEG_QUALITY,
    FaceCrop,
    ViewDraw,
    draw_view,
    make_view,
    view_scale,
)
from dladiff_app.engine.shield.jnd_target import JndController
from dladiff_app.engine.shield.pgd import quantise_ste
from dladiff_app.engine.shield.ssim_target import SsimController

if TYPE_CHECKING:
    from dladiff_app.engine.shield.layer2 import ShieldOptions

# Share of steps that see the photo exactly as shared (1080 px, JPEG q75) and as saved; the
# rest see a random EOT transformation (when EOT is on).
P_SHARED, P_SAVED = 0.4, 0.2
# Steps between two measures of the faces' SSIM (the controller's gain and the SSIM penalty's
# gradient are kept in between): a measure costs about a third of an encoder's step on a
# large face, and x moves by one small step at a time.
SSIM_EVERY = 2
# The same for the visible-difference model, whose pass over a large face at full resolution
# costs more than an encoder's step on its downscaled crop.
JND_EVERY = 4
# The stopping rule: from step STOP_FROM on, every STOP_EVERY steps each region's faces are
# looked at as saved and as shared; a region whose every face is past every encoder's line by
# ``ShieldOptions.stop_margin`` takes no more steps (one host read per check).
STOP_FROM, STOP_EVERY = 20, 10


def identity_term(encoder: IdentityEncoder, emb: torch.Tensor, target: torch.Tensor
                  ) -> torch.Tensor:
    """How much ``emb`` is still ``target``'s identity, in the encoder's own metric, 1 at the
    clean face and lower when it moves away: cosine similarity, or ``1 - d / threshold`` for a
    Euclidean encoder (0 at dlib's "different person" line): the judge's metric is the one
    optimised, so the perturbation is spent on what the judge measures."""
    if encoder.metric == "euclidean":
        # The small constant keeps the gradient finite (zero) at d = 0.
        d = torch.sqrt(((emb.flatten() - target.flatten()) ** 2).sum() + 1e-12)
        return 1.0 - d / float(encoder.threshold)
    return F.cosine_similarity(emb.flatten(), target.flatten(), dim=0)


@dataclass(frozen=True)
class RegionPixels:
    """What the gradient reshaping needs of one region: its clean crop, texture share map
    (fraction of eps each pixel may use) and feathered mask, all (1, 3 or 1, h, w)."""

    clean: torch.Tensor
    share: torch.Tensor
    mask: torch.Tensor


@dataclass(frozen=True)
class StepView:
    """The draws one step shares across faces: the view, the mirror coin, the encoders on."""

    draw: ViewDraw
    flip: bool
    encoders: Sequence[IdentityEncoder]


def perceptual_gradient(grad: torch.Tensor, x: torch.Tensor, px: RegionPixels, eps: float,
                        opts: ShieldOptions, gain: torch.Tensor | None = None,
                        ssim_grad: tuple[torch.Tensor, torch.Tensor] | None = None
                        ) -> torch.Tensor:
    """The identity gradient reshaped for visibility: its colour part scaled by
    ``opts.chroma``, and with a soft budget the gradient of ``sum(((x - clean) / (eps *
    share))^2)`` added at ``opts.soft_budget`` times the identity gradient's L1 size (both
    L1-normalised, so the weight is a ratio whatever the loss scale). The ratio of the two
    norms is taken in float64 on the CPU (float32 on an accelerator: MPS has none) and rounded
    to float32, as a Python float scalar would be, and stays on the device. ``gain`` (0-d, optional) multiplies the soft budget's weight: the
    face-SSIM controller's (:mod:`ssim_target`). ``ssim_grad``: the gradient of the faces'
    lost SSIM and the (1, 1, h, w) mask of the boxes it was measured on; inside them,
    ``opts.ssim_penalty`` of the penalty's luma part is that gradient instead (scaled to the
    same L1 size), so that the change goes where SSIM, the figure the preset promises, does not
    see it."""
    if opts.chroma != 1.0:
        grey = grad.mean(dim=1, keepdim=True)
        grad = grey + opts.chroma * (grad - grey)
    if opts.soft_budget > 0:
        pen = 2.0 * (x - px.clean) / (eps * px.share) ** 2 * (px.mask > 0)
        if opts.visibility == "jnd" and ssim_grad is not None:
            # Inside the face boxes the penalty is the visible-difference model's own gradient
            # (all channels: it knows how little the eye sees of colour), at the L1 size of
            # the plain penalty it replaces there.
            vp, inside = ssim_grad
            plain = pen * inside
            v1 = torch.linalg.vector_norm(vp, ord=1)
            p1 = torch.linalg.vector_norm(plain, ord=1)
            vp = vp * torch.where(v1 > 0, p1 / v1, torch.zeros_like(v1))
            pen = pen + opts.ssim_penalty * (vp - plain)
        elif opts.ssim_penalty > 0 and ssim_grad is not None:
            sp, inside = ssim_grad
            grey = pen.mean(dim=1, keepdim=True).expand_as(pen) * inside
            sp1 = torch.linalg.vector_norm(sp, ord=1)
            tp1 = torch.linalg.vector_norm(grey, ord=1)
            sp = sp * torch.where(sp1 > 0, tp1 / sp1, torch.zeros_like(sp1))
            pen = pen + opts.ssim_penalty * (sp - grey)
        wide = accumulate_dtype(grad.device)
        g1 = torch.linalg.vector_norm(grad, ord=1).to(wide)
        p1 = torch.linalg.vector_norm(pen, ord=1).to(wide)
        ratio = torch.where(p1 > 0, g1 / p1, torch.zeros_like(g1)) * opts.soft_budget
        if gain is not None:
            ratio = ratio * gain.to(wide)
        grad = grad + ratio.to(grad.dtype) * pen
    return grad


class FaceIdentityTerm:
    """Layer 2's identity loss on the face regions (variables: the regions' crops, in
    ``regions`` order). ``crops[r]``: the own crops of region ``r``'s faces; ``targets[i]``:
    face ``i``'s clean embeddings by encoder name; ``weights`` by encoder name (missing: 1,
    0: never evaluated). ``gen``: the CPU generator of the views, coins and jitter.
    ``controllers``: one face-SSIM controller per region, or None for the fixed weight."""

    name = "identity"

    def __init__(self, regions: Sequence[FaceRegion], crops: Sequence[Sequence[FaceCrop]],
                 pixels: Sequence[RegionPixels], encoders: Sequence[IdentityEncoder],
                 targets: Sequence[Mapping[str, torch.Tensor]],
                 weights: Mapping[str, float] | None, opts: ShieldOptions,
                 gen: torch.Generator, eot_cfg: EotConfig | None, eps: float,
                 controllers: Sequence[SsimController] | None = None,
                 shapers: Sequence[JndController] | None = None) -> None:
        self.regions, self.crops, self.pixels = regions, crops, pixels
        self.controllers = controllers
        self.shapers = shapers
        self.gains: list[torch.Tensor | None] = [None] * len(regions)
        self.ssim_grads: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(regions)
        self.encoders, self.targets, self.weights = encoders, targets, weights
        self.opts, self.gen, self.eot_cfg, self.eps = opts, gen, eot_cfg, eps
        self.stopped = [False] * len(regions)
        self.stopped_at: list[int | None] = [None] * len(regions)

    def gradients(self, xs: Sequence[torch.Tensor], step: int
                  ) -> tuple[list[torch.Tensor | None], torch.Tensor]:
        seen = self.step_view(step)
        grads: list[torch.Tensor | None] = []
        total = torch.zeros((), device=xs[0].device)
        for r, (region, rcrops, px, x) in enumerate(zip(self.regions, self.crops, self.pixels,
                                                        xs, strict=True)):
            if self.stopped[r] or self._stops(r, x, step):
                grads.append(None)
                continue
            leaf = x.detach().requires_grad_(True)
            with residual_gradient_decay(self.opts.skip_gradient), \
                    antialiased_warps(self.opts.antialias):
                loss = leaf.new_zeros(())
                for i, fc in zip(region.faces, rcrops, strict=True):
                    x0, y0, x1, y1 = fc.box
                    whole = (x0, y0, x1, y1) == (0, 0, region.width, region.height)
                    loss = self.face_loss(loss, leaf if whole else leaf[..., y0:y1, x0:x1], fc,
                                          self.targets[i], seen)
                if not loss.requires_grad:
                    grads.append(None)
                    continue
                grad = torch.autograd.grad(loss, leaf)[0]
            total = total + loss.detach()
            with torch.no_grad():
                if self.opts.grad_blur > 0:
                    grad = gaussian_blur(grad, self.opts.grad_blur, mode="reflect")
                every = JND_EVERY if self.shapers is not None else SSIM_EVERY
                if (self.controllers is not None or self.shapers is not None) \
                        and step % every == 0:
                    self.measure_visibility(r, x)
                grads.append(perceptual_gradient(grad, x, px, self.eps, self.opts,
                                                 self.gains[r], self.ssim_grads[r]))
        return grads, total

    def _stops(self, r: int, x: torch.Tensor, step: int) -> bool:
        """The stopping rule (see STOP_EVERY): is region ``r`` done at ``step``?"""
        margin = self.opts.stop_margin
        if margin is None or step < STOP_FROM or step % STOP_EVERY:
            return False
        region, rcrops = self.regions[r], self.crops[r]
        draws = (ViewDraw("saved"),
                 ViewDraw("shared", transform=TransformParams(jpeg_quality=SHARED_JPEG_QUALITY)))
        worst = x.new_full((), -1e9)
        with torch.no_grad():
            for i, fc in zip(region.faces, rcrops, strict=True):
                x0, y0, x1, y1 = fc.box
                sub = x[..., y0:y1, x0:x1]
                for draw in draws:
                    view, vface = make_view(quantise_ste(sub) if draw.kind == "saved" else sub,
                                            fc, draw)
                    for enc in self.encoders:
                        term = identity_term(enc, enc.embed(view, vface),
                                             self.targets[i][enc.name])
                        line = 0.0 if enc.metric == "euclidean" else float(enc.threshold)
                        worst = torch.maximum(worst, term - (line - margin))
        if float(worst) < 0.0:
            self.stopped[r], self.stopped_at[r] = True, step
        return self.stopped[r]

    def measure_visibility(self, r: int, x: torch.Tensor) -> None:
        """Region ``r``'s visibility, kept until the next measure: with the
        visible-difference model (``shapers``), its gradient, which shapes the penalty inside
        the faces at a fixed weight (the shield projects the change under the target itself);
        otherwise the face SSIM controller's new gain and, with the SSIM penalty on, the
        SSIM's gradient."""
        if self.shapers is not None:
            self.ssim_grads[r] = (self.shapers[r].gradient(x), self.shapers[r].inside)
            return
        assert self.controllers is not None
        ctl = self.controllers[r]
        if self.opts.ssim_penalty > 0:
            value, sp = ctl.measure(x)
            self.ssim_grads[r] = (sp, ctl.inside)
        else:
            value = ctl.ssim(x)
        self.gains[r] = ctl.update(x, value) if self.opts.face_ssim_control else None

    # The two functions below are how a step sees the faces (view, mirror, jitter, encoders).

    def step_view(self, step: int) -> StepView:
        """The draws shared by every face of one step (from ``gen``, in this order)."""
        draw = draw_view(self.gen, self.eot_cfg, P_SHARED, P_SAVED)
        flip = bool(float(torch.rand((), generator=self.gen)) < self.opts.flip)
        encoders = ([self.encoders[step % len(self.encoders)]]
                    if self.opts.one_encoder_per_step else list(self.encoders))
        return StepView(draw, flip, encoders)

    def face_loss(self, loss: torch.Tensor, sub: torch.Tensor, fc: FaceCrop,
                  target: Mapping[str, torch.Tensor], seen: StepView) -> torch.Tensor:
        """``loss`` plus the weighted identity terms of one face whose own crop is ``sub``
        (1, 3, h, w) (added one by one: the gradient's summation order is the layer's own)."""
        # Seen through the 8-bit file; a downscaled view averages the rounding away.
        if view_scale(fc, seen.draw) >= 0.999:
            sub = quantise_ste(sub)
        view, vface = make_view(sub, fc, seen.draw)
        vface = jitter_face(vface, self.gen, self.opts.jitter)
        if self.opts.colour_jitter > 0:
            # Contrast and brightness as another camera pipeline or a filter would set them.
            u = torch.rand(2, generator=self.gen) * 2 - 1
            view = view * (1.0 + self.opts.colour_jitter * float(u[0])) \
                + 0.5 * self.opts.colour_jitter * float(u[1])
        for enc in seen.encoders:
            wk = 1.0 if self.weights is None else float(self.weights.get(enc.name, 1.0))
            if wk != 0.0:
                emb = enc.embed(view, vface, flip=True) if seen.flip else enc.embed(view, vface)
                loss = loss + wk * identity_term(enc, emb, target[enc.name])
        return loss
