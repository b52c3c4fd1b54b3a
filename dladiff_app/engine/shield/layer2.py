"""Layer 2, the zero-shot shield: make every face's identity embedding move away from its own.

For each detected face and each identity encoder available (ArcFace models, CLIP image towers,
the offline dlib ResNet), PGD pushes the encoder's embedding of the protected face away from the
clean face's, in the encoder's own metric (cosine similarity, or Euclidean distance for dlib;
METHOD.md, "Layer 2"). The perturbation lives at full resolution on padded crops around the faces
and is blended in with a feathered mask, in the same L-inf ball around the clean photo as layer
1's. Each step looks at every face through one "view": the 8-bit photo itself, the photo as a
platform shares it (downscaled to a 1080 px long side, JPEG q75), or a random sharing
transformation. A view is computed at the scale the encoder needs (a big face is downscaled
first, with a differentiable antialiased resize, so the gradient reaches every full-resolution
pixel), so the cost follows the number of faces, not the photo's megapixels or the faces' size.

Tensor contract: photos are (1, 3, H, W) float32 RGB in [0, 1] on one device, full resolution.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
import torch.nn.functional as F

from dladiff_app.core.errors import ModelMissingError
from dladiff_app.core.presets import ProtectionSettings
from dladiff_app.engine.faces.score import similarity
from dladiff_app.engine.faces.types import Face, IdentityEncoder
from dladiff_app.engine.shield.driver import Box, CosineDecay, Driver, Phase
from dladiff_app.engine.shield.eot import EotConfig
from dladiff_app.engine.shield.face_region import (
    FaceRegion,
    face_regions,
    feathered_mask,
    merge_boxes,
    region_for,
    shift_face,
)
from dladiff_app.engine.shield.face_term import (
    P_SAVED,
    P_SHARED,
    FaceIdentityTerm,
    RegionPixels,
    identity_term,
)
from dladiff_app.engine.shield.face_views import (
    SHARE_LONG_SIDE,
    FaceCrop,
    share_scale,
    work_scale,
)
from dladiff_app.engine.shield.jnd_target import JndController, capped
from dladiff_app.engine.shield.perceptual import texture_budget
from dladiff_app.engine.shield.pgd import grid_bounds
from dladiff_app.engine.shield.ssim_target import SsimController

log = logging.getLogger(__name__)
__all__ = ["FIRST_RELEASE", "NO_FACE_WARNING", "P_SAVED", "P_SHARED", "Layer2Result",
           "ShieldOptions", "clean_embeddings", "identity_term", "identity_value",
           "layer2_loss", "protect_faces"]

NO_FACE_WARNING = "No face found: the zero-shot shield was skipped for this photo."
# Side of a face's own crop over the face's extent: holds the encoders' chips (checked by
# exact_regions) and the feathered mask, which ends at 2 box sides.
OWN_CONTEXT = 2.0
# Step schedule: cosine decay from ALPHA_PEAK to ALPHA_FLOOR times ``settings.step2``; momentum
# (MI-FGSM, ``ShieldOptions.momentum``) keeps a direction that holds across the random views.
ALPHA_PEAK, ALPHA_FLOOR = 5.0, 0.5
# An encoder's embedding of a crop must match its embedding of the full photo this closely
# (cosine), or the crop is widened: the optimiser must see exactly what the encoder sees.
CROP_EXACT_COS = 0.9999


@dataclass(frozen=True)
class ShieldOptions:
    """Levers that make the perturbation transfer to face models the shield never saw, and keep
    it out of sight. The defaults are what ``benchmarks/transfer.py`` measured best on the
    tuning photos (the figures and the levers tried and dropped are in
    ``benchmarks/results/transfer_cpu.md`` and the README's "Decisions"); each lever at its
    neutral value gives the first release's shield (``FIRST_RELEASE``).

    Transfer: ``flip``, the share of steps on which every encoder looks at the mirror image of
    the aligned face; ``jitter``, the size of a random similarity transform of the landmarks
    on every step (box sides; :func:`face_region.jitter_face`): noise on the alignment matrix,
    standing for an attack tool's own face alignment; ``one_encoder_per_step`` cycles through
    the encoders, one per step; ``grad_blur``, a Gaussian sigma (pixels) smoothing each step's
    gradient; ``colour_jitter``, the size of a random contrast (1 +- a) and brightness (+- a/2)
    change of every view; ``skip_gradient``, the factor on the gradient through every residual
    branch of an encoder (:mod:`faces.gradient_decay`); ``antialias``, a factor on the Gaussian
    pre-blur of every encoder's crop while gradients are taken
    (:func:`align.antialiased_warps`; scores use the exact crop).

    Visibility: ``visibility`` names what holds every face's look. ``"jnd"`` (default): the
    visible-difference model (:mod:`engine.visible_diff`): inside the face boxes the soft
    penalty follows its gradient, every 4 steps the change is scaled down where the face's map
    is over ``ProtectionSettings.face_jnd_target`` (:meth:`jnd_target.JndController.local_scale`),
    and with ``jnd_cap`` the saved face is blended back until its figure is at or under the
    target. ``"ssim"`` (the previous release, ``SSIM_RELEASE``): a controller steers the soft
    penalty's weight to the preset's face SSIM (``face_ssim_control``) and ``ssim_penalty`` of
    the penalty's luma part inside the faces is SSIM's gradient. In both, ``texture_floor`` < 1
    turns on the texture-masking map (:mod:`perceptual`; the share of ``eps`` a flat pixel
    keeps; ``texture_reference`` the local contrast, 1/255, that earns the whole budget),
    ``soft_budget`` > 0 uses the map as a penalty of that weight (relative to the identity
    gradient) instead of a hard per-pixel bound, and ``chroma`` scales the colour part of every
    step.

    Optimiser: ``momentum``, the MI-FGSM decay of the accumulated direction; ``stop_margin`` (None: off), the stopping rule: from step 20 on, every 10 steps, a region
    whose every face is past every encoder's line by this margin (cosine, or ``1 - d /
    threshold`` for a Euclidean encoder), saved and shared, takes no more steps.
    """

    flip: float = 0.5
    jitter: float = 0.05
    one_encoder_per_step: bool = True
    grad_blur: float = 0.0
    texture_floor: float = 0.25
    texture_reference: float = 6.0
    soft_budget: float = 0.32
    chroma: float = 0.3
    colour_jitter: float = 0.2
    skip_gradient: float = 0.5
    antialias: float = 2.0
    face_ssim_control: bool = True
    ssim_penalty: float = 0.5
    momentum: float = 0.3
    visibility: str = "jnd"
    stop_margin: float | None = None
    jnd_cap: bool = True


# The zero-shot shield of the release before the visible-difference model: every face held at
# its preset's face SSIM (benchmarks compare against it side by side).
SSIM_RELEASE = ShieldOptions(visibility="ssim", jnd_cap=False)

# The zero-shot shield as the first release shipped it: every lever neutral.
FIRST_RELEASE = ShieldOptions(flip=0.0, jitter=0.0, one_encoder_per_step=False, grad_blur=0.0,
                              texture_floor=1.0, soft_budget=0.0, chroma=1.0, colour_jitter=0.0,
                              skip_gradient=1.0, antialias=0.0, face_ssim_control=False,
                              ssim_penalty=0.0, momentum=0.75, visibility="ssim",
                              jnd_cap=False)


class _Cancel(Protocol):
    def check(self) -> None: ...


@dataclass
class Layer2Result:
    """What :func:`protect_faces` produced.

    ``protected``: (1, 3, H, W) float32 in [0, 1]; inside the face regions on the 8-bit grid
    (``rint(x*255)/255`` leaves it unchanged there), outside them equal to ``start``.
    ``final_similarity[i][name]``: face ``i`` (the caller's order) against its clean self for
    encoder ``name``, measured on the quantised result without EOT, in the encoder's own metric
    (cosine similarity, or Euclidean distance for ``metric == "euclidean"``).
    ``regions``: the crops worked on, (x0, y0, x1, y1) slice bounds.
    """

    protected: torch.Tensor
    final_similarity: list[dict[str, float]]
    steps_done: int
    warnings: tuple[str, ...] = ()
    regions: tuple[tuple[int, int, int, int], ...] = ()
    initial_similarity: list[dict[str, float]] = field(default_factory=list)
    # Per region: the step at which the stopping rule stopped it (None: it ran every step).
    stopped_at: tuple[int | None, ...] = ()


def identity_value(encoder: IdentityEncoder, a: torch.Tensor, b: torch.Tensor) -> float:
    """Compare two (D,) embeddings the way ``encoder`` judges identity (cosine or Euclidean),
    as a plain float: :func:`engine.faces.score.similarity` on detached tensors."""
    return float(similarity(encoder, a.detach(), b.detach()))


def clean_embeddings(image: torch.Tensor, faces: Sequence[Face],
                     encoders: Sequence[IdentityEncoder]) -> list[dict[str, torch.Tensor]]:
    """Embeddings of the clean faces: ``result[i][encoder.name]`` is (D,), detached."""
    with torch.no_grad():
        return [{e.name: e.embed(image, f).detach() for e in encoders} for f in faces]


def layer2_loss(image: torch.Tensor, faces: Sequence[Face], encoders: Sequence[IdentityEncoder],
                targets: Sequence[Mapping[str, torch.Tensor]],
                weights: Mapping[str, float] | None = None) -> torch.Tensor:
    """``sum_faces sum_k w_k * identity_term(E_k(crop_k(image)), target_k)`` (cosine
    similarity, or ``1 - d / threshold`` for Euclidean encoders): the quantity layer 2
    minimises (a scalar tensor, differentiable with respect to ``image``).

    ``image``: (1, 3, H, W) float32 [0, 1], the photo or a crop of it; ``faces`` in that
    image's coordinates; ``targets[i][name]`` the clean embedding of face ``i`` (see
    :func:`clean_embeddings`). Missing weights count 1. A joint polish can add this to layer 1's
    loss with its own sign and scale.
    """
    total = image.new_zeros(())
    for face, target in zip(faces, targets, strict=True):
        for enc in encoders:
            w = 1.0 if weights is None else float(weights.get(enc.name, 1.0))
            if w == 0.0:
                continue
            total = total + w * identity_term(enc, enc.embed(image, face), target[enc.name])
    return total


def eot_config_for(width: int, height: int) -> EotConfig:
    """METHOD.md's EOT ranges, with the downscale reaching a 1080 px share of a big photo (for
    callers that transform a full-resolution crop; :func:`protect_faces` scales its views
    itself and uses :class:`EotConfig`'s own ranges relative to the working scale)."""
    base = EotConfig()
    ratio = min(1.0, SHARE_LONG_SIDE / max(width, height))
    return replace(base, scale=(base.scale[0] * ratio, base.scale[1]))


def _max_crop_error(image: torch.Tensor, regions: Sequence[FaceRegion],
                    full: Sequence[Mapping[str, torch.Tensor]],
                    encoders: Sequence[IdentityEncoder]) -> float:
    """Largest ``1 - cos`` between an encoder's embedding of a face in its crop and in the full
    photo."""
    worst = 0.0
    with torch.no_grad():
        for region in regions:
            crop = region.crop(image)
            for i, lf in zip(region.faces, region.local_faces, strict=True):
                for e in encoders:
                    cos = F.cosine_similarity(e.embed(crop, lf).flatten(),
                                              full[i][e.name].flatten(), dim=0)
                    worst = max(worst, 1.0 - float(cos))
    return worst


def exact_regions(image: torch.Tensor, faces: Sequence[Face],
                  encoders: Sequence[IdentityEncoder],
                  full: Sequence[Mapping[str, torch.Tensor]], *,
                  context: float = 2.6) -> list[FaceRegion]:
    """Crops around ``faces`` inside which every encoder sees each face exactly as in the full
    photo (``full``: clean embeddings computed on the full photo). ``context``: the first crop
    size tried (see :func:`face_regions`); widened until true; at worst the whole photo."""
    h, w = image.shape[-2:]
    while True:
        regions = face_regions(faces, w, h, context=context)
        err = _max_crop_error(image, regions, full, encoders)
        if err <= 1.0 - CROP_EXACT_COS or all(r.box == (0, 0, w, h) for r in regions):
            return regions
        log.info("Face crops widened: crop/full embedding mismatch %.2e at context %.1f",
                 err, context)
        context *= 1.5


def _check_inputs(image: torch.Tensor, start: torch.Tensor) -> None:
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(f"image must be (1, 3, H, W), got {tuple(image.shape)}")
    if start.shape != image.shape:
        raise ValueError(f"start {tuple(start.shape)} must match image {tuple(image.shape)}")
    if float(start.min()) < 0.0 or float(start.max()) > 1.0:
        raise ValueError("start must be in [0, 1]")


def _similarities(image: torch.Tensor, regions: Sequence[FaceRegion], n_faces: int,
                  encoders: Sequence[IdentityEncoder],
                  targets: Sequence[Mapping[str, torch.Tensor]]) -> list[dict[str, float]]:
    out: list[dict[str, float]] = [{} for _ in range(n_faces)]
    with torch.no_grad():
        for region in regions:
            crop = region.crop(image)
            for i, lf in zip(region.faces, region.local_faces, strict=True):
                for e in encoders:
                    out[i][e.name] = identity_value(e, e.embed(crop, lf), targets[i][e.name])
    return out


def _face_crops(image: torch.Tensor, faces: Sequence[Face], encoders: Sequence[IdentityEncoder],
                targets: Sequence[Mapping[str, torch.Tensor]]
                ) -> tuple[list[FaceRegion], list[list[FaceCrop]]]:
    """Each face's own exact crop (see :func:`exact_regions`), and the regions that hold them:
    overlapping crops merge into one region, so that every pixel has one perturbation, while each
    face is still looked at through its own small crop."""
    h, w = image.shape[-2:]
    own = [exact_regions(image, [f], encoders, [t], context=OWN_CONTEXT)[0].box
           for f, t in zip(faces, targets, strict=True)]
    regions, crops = [], []
    s_share = share_scale(w, h)
    for box, idx in merge_boxes(own, w, h):
        region = region_for(box, idx, faces)
        regions.append(region)
        rc = []
        for i in idx:
            x0, y0, x1, y1 = own[i]
            rc.append(FaceCrop(box=(x0 - box[0], y0 - box[1], x1 - box[0], y1 - box[1]),
                               origin=(x0, y0), face=shift_face(faces[i], x0, y0),
                               work_scale=work_scale(faces[i]), share_scale=s_share))
        crops.append(rc)
    return regions, crops


# Steps between two projections of the change under the visibility target.
PROJECT_EVERY = 4


def _phases(total: int, name: str, shapers: Sequence[JndController],
            starts: Sequence[torch.Tensor]) -> list[Phase]:
    """The run as driver phases: one phase, or, with a visibility target, phases of
    PROJECT_EVERY steps each followed by a projection of every region's change under its
    target: the visible-difference model's figure grows in proportion to the size of the
    change, so the change is scaled towards ``starts`` by target / figure where it is seen
    (:meth:`JndController.local_scale`)."""
    if not shapers:
        return [Phase(total, {name: 1.0})]

    def project(driver: Driver, _result: object) -> None:
        with torch.no_grad():
            for i, (shaper, start) in enumerate(zip(shapers, starts, strict=True)):
                scale = shaper.local_scale(driver.xs[i])
                driver.xs[i] = start + (driver.xs[i] - start) * scale

    return [Phase(min(PROJECT_EVERY, total - k), {name: 1.0}, after=project)
            for k in range(0, total, PROJECT_EVERY)]


def protect_faces(image: torch.Tensor, start: torch.Tensor | None, faces: list[Face],
                  encoders: list[IdentityEncoder], settings: ProtectionSettings, *,
                  weights: dict[str, float] | None = None, steps: int | None = None,
                  cancel: _Cancel | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  generator_seed: int | None = None,
                  eot: EotConfig | None = None,
                  options: ShieldOptions | None = None) -> Layer2Result:
    """Run the zero-shot shield on one photo.

    ``image``: the clean photo, (1, 3, H, W) float32 RGB [0, 1]. ``start``: layer 1's result
    (None: the clean photo); this shield's ``eps`` ball is around it, on top of layer 1's
    budget (METHOD.md "Composition and strength"). ``faces``: detections on the clean photo, each
    protected against its own clean embedding. ``encoders``: the ensemble; ``weights`` by
    encoder name (default 1). ``settings``: ``eps`` (budget), ``step2`` (PGD step scale),
    ``eot``, ``seed``, ``layer2_steps`` (unless ``steps`` is given). ``eot`` overrides the
    sampling ranges of the random views (default :class:`EotConfig`). ``cancel.check()`` runs
    before every step and raises ``Cancelled``; ``progress(done, total)`` after every step.

    PGD: random start in the ball, then per step one view of every face (see
    :mod:`face_views`: the saved file, the shared file, or a random sharing transformation; only
    the saved file without EOT), signed-gradient descent with momentum on
    :func:`layer2_loss`'s terms seen through 8-bit quantisation, a step size decaying from
    ``5 * step2`` to ``step2 / 2``, projected on the ball around ``start``; the result is
    blended into ``start`` with a feathered mask and put on the 8-bit grid inside the face
    regions.
    """
    eps = settings.eps / 255.0
    alpha = settings.step2 / 255.0
    start = image if start is None else start
    _check_inputs(image, start)
    total = settings.layer2_steps if steps is None else int(steps)
    if not faces:
        log.info(NO_FACE_WARNING)
        return Layer2Result(protected=start.detach().clone(), final_similarity=[],
                            steps_done=0, warnings=(NO_FACE_WARNING,))
    if not encoders:
        raise ModelMissingError("No identity encoder is available for the zero-shot shield: "
                                "install or download at least one face model (dlib's is "
                                "offline) in the model manager.")
    image = image.detach()
    start = start.detach()
    gen = torch.Generator().manual_seed(settings.seed if generator_seed is None
                                        else int(generator_seed))
    eot_cfg = (eot or EotConfig()) if settings.eot else None
    opts = options or ShieldOptions()

    targets = clean_embeddings(image, faces, encoders)
    regions, crops = _face_crops(image, faces, encoders, targets)
    initial = _similarities(start, regions, len(faces), encoders, targets)

    boxes, pixels, starts, finals, controllers = [], [], [], [], []
    shapers: list[JndController] = []
    for region in regions:
        clean_c = region.crop(image)
        start_c = region.crop(start).clone()
        mask = feathered_mask((region.height, region.width),
                              region.local_faces).to(image)
        share = texture_budget(clean_c, opts.texture_floor, opts.texture_reference / 255.0,
                               scale=min(work_scale(f) for f in region.local_faces))
        # Hard map: each pixel's own bound; soft map: the full ball, the map weighs a penalty.
        # The ball is around layer 1's result: the two budgets add up on the faces.
        lo, hi = grid_bounds(start_c, eps if opts.soft_budget > 0 else eps * share)
        # The photo is x = start + mask * (y - start) with y in the ball [lo, hi]: x itself is
        # optimised, in the box that y's ball maps to (a step of y by a is one of x by
        # mask * a), so that no step spends full-resolution passes on the blend.
        boxes.append(Box(start_c + mask * (lo - start_c), start_c + mask * (hi - start_c),
                         step_mask=mask))
        pixels.append(RegionPixels(clean_c, share, mask))
        local = [tuple(map(float, f.box)) for f in region.local_faces]
        if opts.visibility != "jnd" and (opts.face_ssim_control or opts.ssim_penalty > 0) \
                and opts.soft_budget > 0:
            controllers.append(SsimController(clean_c, local, settings.face_ssim_target))
        if opts.visibility == "jnd" or opts.jnd_cap:
            shapers.append(JndController(clean_c, local, settings.face_jnd_target))
        # Random start: at delta = 0 the gradient through an encoder's warp can be exactly 0.
        noise = (torch.rand(clean_c.shape, generator=gen) * 2 - 1).to(image) * eps
        y = torch.minimum(torch.maximum(start_c + noise, lo), hi)
        starts.append(start_c + mask * (y - start_c))
        finals.append((start_c, mask, lo, hi))

    # The visible-difference model shapes the penalty and projects the change ("jnd"), or the
    # face-SSIM controllers steer the penalty's weight ("ssim"); the cap works with either.
    jnd = opts.visibility == "jnd"
    term = FaceIdentityTerm(regions, crops, pixels, encoders, targets, weights, opts, gen,
                            eot_cfg, eps, controllers or None, shapers if jnd else None)
    driver = Driver(starts, boxes, [term], CosineDecay(ALPHA_PEAK * alpha, ALPHA_FLOOR * alpha),
                    momentum=opts.momentum, cancel=cancel, progress=progress)
    driver.run(_phases(total, term.name, shapers if jnd else [], [f[0] for f in finals]))
    done = driver.done

    protected = start.clone()
    with torch.no_grad():
        for region, (start_c, mask, lo, hi), x in zip(regions, finals, driver.xs, strict=True):
            q = torch.minimum(torch.maximum(torch.round(x * 255.0) / 255.0, lo), hi)
            if opts.jnd_cap:
                q = capped(start_c, q, shapers[regions.index(region)])
            # Where the mask is 0 the photo is layer 1's, bit for bit.
            x0, y0, x1, y1 = region.box
            protected[..., y0:y1, x0:x1] = torch.where(mask > 0, q, start_c)
    final = _similarities(protected, regions, len(faces), encoders, targets)
    log.info("Layer 2: %d faces, %d steps, final %s", len(faces), done, final)
    return Layer2Result(protected=protected, final_similarity=final, steps_done=done,
                        regions=tuple(r.box for r in regions), initial_similarity=initial,
                        stopped_at=tuple(term.stopped_at))
