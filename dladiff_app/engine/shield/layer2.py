"""Layer 2, the zero-shot shield: make every face's identity embedding move away from its own.

For each detected face and each identity encoder available (ArcFace models, CLIP image towers,
the offline dlib ResNet), PGD minimises the weighted cosine similarity between the encoder's
embedding of the protected face and of the clean face (METHOD.md, "Layer 2"). The work happens on
padded crops around the faces, so its cost follows the faces' pixel area, not the photo's
megapixels; the change is blended in with a feathered mask and stays in the same L-inf ball
around the clean photo as layer 1's.

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
from dladiff_app.engine.faces.types import Face, IdentityEncoder
from dladiff_app.engine.shield.eot import EotConfig, apply_transform, sample_transform
from dladiff_app.engine.shield.face_region import FaceRegion, face_regions, feathered_mask

log = logging.getLogger(__name__)

NO_FACE_WARNING = "No face found: the zero-shot shield was skipped for this photo."
# Platforms resize to about this long side before they re-compress; EOT's downscale range is
# widened for bigger photos so that it covers what their faces go through.
SHARE_LONG_SIDE = 1080
# An encoder's embedding of a crop must match its embedding of the full photo this closely
# (cosine), or the crop is widened: the optimiser must see exactly what the encoder sees.
CROP_EXACT_COS = 0.9999


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


def identity_value(encoder: IdentityEncoder, a: torch.Tensor, b: torch.Tensor) -> float:
    """Compare two embeddings the way ``encoder`` judges identity (cosine or Euclidean)."""
    if encoder.metric == "euclidean":
        return float(torch.linalg.vector_norm(a.detach() - b.detach()))
    return float(F.cosine_similarity(a.detach().flatten(), b.detach().flatten(), dim=0))


def clean_embeddings(image: torch.Tensor, faces: Sequence[Face],
                     encoders: Sequence[IdentityEncoder]) -> list[dict[str, torch.Tensor]]:
    """Embeddings of the clean faces: ``result[i][encoder.name]`` is (D,), detached."""
    with torch.no_grad():
        return [{e.name: e.embed(image, f).detach() for e in encoders} for f in faces]


def layer2_loss(image: torch.Tensor, faces: Sequence[Face], encoders: Sequence[IdentityEncoder],
                targets: Sequence[Mapping[str, torch.Tensor]],
                weights: Mapping[str, float] | None = None) -> torch.Tensor:
    """``sum_faces sum_k w_k * cos(E_k(crop_k(image)), target_k)``: the quantity layer 2
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
            emb = enc.embed(image, face)
            cos = F.cosine_similarity(emb.flatten(), target[enc.name].flatten(), dim=0)
            total = total + w * cos
    return total


def eot_config_for(width: int, height: int) -> EotConfig:
    """METHOD.md's EOT ranges, with the downscale reaching a 1080 px share of a big photo."""
    base = EotConfig()
    ratio = min(1.0, SHARE_LONG_SIDE / max(width, height))
    return replace(base, scale=(base.scale[0] * ratio, base.scale[1]))


def _quantise_ste(x: torch.Tensor) -> torch.Tensor:
    # Forward on the 8-bit grid the file will be written on; gradient as if identity.
    return x + (torch.round(x * 255.0) / 255.0 - x).detach()


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
                  full: Sequence[Mapping[str, torch.Tensor]]) -> list[FaceRegion]:
    """Crops around ``faces`` inside which every encoder sees each face exactly as in the full
    photo (``full``: clean embeddings computed on the full photo). Widened until true; at worst
    the crop is the whole photo."""
    h, w = image.shape[-2:]
    context = 2.6
    while True:
        regions = face_regions(faces, w, h, context=context)
        err = _max_crop_error(image, regions, full, encoders)
        if err <= 1.0 - CROP_EXACT_COS or all(r.box == (0, 0, w, h) for r in regions):
            return regions
        log.info("Face crops widened: crop/full embedding mismatch %.2e at context %.1f",
                 err, context)
        context *= 1.5


def _check_inputs(image: torch.Tensor, start: torch.Tensor, eps: float) -> None:
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(f"image must be (1, 3, H, W), got {tuple(image.shape)}")
    if start.shape != image.shape:
        raise ValueError(f"start {tuple(start.shape)} must match image {tuple(image.shape)}")
    # A little slack: layer 1 may hand over an fp32 result a rounding error outside the ball.
    over = float((start - image).abs().max())
    if over > eps + 1e-4:
        raise ValueError(f"start is {over * 255:.2f}/255 from the clean image, outside the "
                         f"{eps * 255:.2f}/255 budget")


def _grid_bounds(clean: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The eps-ball around ``clean`` intersected with [0, 1], shrunk to 8-bit grid values where
    ``clean`` is on the grid, so that quantising a point of the ball keeps it in the ball."""
    lo = torch.ceil(((clean - eps).clamp(0.0, 1.0) * 255.0) - 1e-4) / 255.0
    hi = torch.floor(((clean + eps).clamp(0.0, 1.0) * 255.0) + 1e-4) / 255.0
    return torch.minimum(lo, clean), torch.maximum(hi, clean)


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


def protect_faces(image: torch.Tensor, start: torch.Tensor | None, faces: list[Face],
                  encoders: list[IdentityEncoder], settings: ProtectionSettings, *,
                  weights: dict[str, float] | None = None, steps: int | None = None,
                  cancel: _Cancel | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  generator_seed: int | None = None,
                  eot: EotConfig | None = None) -> Layer2Result:
    """Run the zero-shot shield on one photo.

    ``image``: the clean photo, (1, 3, H, W) float32 RGB [0, 1]. ``start``: layer 1's result in
    the same ball (None: the clean photo). ``faces``: detections on the clean photo, each
    protected against its own clean embedding. ``encoders``: the ensemble; ``weights`` by
    encoder name (default 1). ``settings``: ``eps`` (budget), ``step2`` (PGD step), ``eot``,
    ``seed``, ``layer2_steps`` (unless ``steps`` is given). ``eot`` overrides the sampling
    ranges (default: :func:`eot_config_for` the photo size). ``cancel.check()`` runs before
    every step and raises ``Cancelled``; ``progress(done, total)`` after every step.

    PGD: random start in the ball, signed-gradient descent on :func:`layer2_loss` seen through
    8-bit quantisation and one random EOT view per step, projected on the ball around ``image``;
    the result is blended into ``start`` with a feathered mask and put on the 8-bit grid inside
    the face regions.
    """
    eps = settings.eps / 255.0
    alpha = settings.step2 / 255.0
    start = image if start is None else start
    _check_inputs(image, start, eps)
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
    h, w = image.shape[-2:]
    eot_cfg = (eot or eot_config_for(w, h)) if settings.eot else None

    targets = clean_embeddings(image, faces, encoders)
    regions = exact_regions(image, faces, encoders, targets)
    initial = _similarities(start, regions, len(faces), encoders, targets)

    states = []
    for region in regions:
        clean_c = region.crop(image)
        start_c = region.crop(start).clone()
        mask = feathered_mask((region.height, region.width),
                              region.local_faces).to(image)
        lo, hi = _grid_bounds(clean_c, eps)
        # Random start: at delta = 0 the gradient through an encoder's warp can be exactly 0.
        noise = (torch.rand(clean_c.shape, generator=gen) * 2 - 1).to(image) * eps
        y = torch.minimum(torch.maximum(start_c + noise, lo), hi)
        states.append((region, start_c, mask, lo, hi, y))

    done = 0
    for step in range(total):
        if cancel is not None:
            cancel.check()
        for k, (region, start_c, mask, lo, hi, y) in enumerate(states):
            y = y.detach().requires_grad_(True)
            # Outside the mask the photo stays ``start``; the blend of two points of the ball
            # is in the ball, so only ``y`` needs projecting.
            x = start_c + mask * (y - start_c)
            view = _quantise_ste(x)
            if eot_cfg is not None:
                view = apply_transform(view, sample_transform(eot_cfg, gen))
            loss = layer2_loss(view, region.local_faces, encoders,
                               [targets[i] for i in region.faces], weights)
            (grad,) = torch.autograd.grad(loss, y)
            with torch.no_grad():
                y = torch.minimum(torch.maximum(y - alpha * grad.sign(), lo), hi)
            states[k] = (region, start_c, mask, lo, hi, y.detach())
        done = step + 1
        if progress is not None:
            progress(done, total)

    protected = start.clone()
    with torch.no_grad():
        for region, start_c, mask, lo, hi, y in states:
            x = start_c + mask * (y - start_c)
            q = torch.minimum(torch.maximum(torch.round(x * 255.0) / 255.0, lo), hi)
            # Where the mask is 0 the photo is layer 1's, bit for bit.
            x0, y0, x1, y1 = region.box
            protected[..., y0:y1, x0:x1] = torch.where(mask > 0, q, start_c)
    final = _similarities(protected, regions, len(faces), encoders, targets)
    log.info("Layer 2: %d faces, %d steps, final %s", len(faces), done, final)
    return Layer2Result(protected=protected, final_similarity=final, steps_done=done,
                        regions=tuple(r.box for r in regions), initial_similarity=initial)
