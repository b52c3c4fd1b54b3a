"""Joint polish: a few signed-gradient steps on both shields' losses at once (METHOD.md,
"Composition and strength", our choice).

Layer 2 starts from layer 1's result and optimises identity alone, so it may undo part of what
layer 1 did inside the face; the polish then descends the combined objective

    J(x) = layer2_loss(x) - lambda * L_dual(x)

(identity similarity down, the surrogates' denoising loss up) on the photo as it will be saved.

Gradient normalisation (our choice): each loss's gradient is divided by its own mean absolute
value over the photo before the two are added, then the sign is taken. The raw magnitudes differ
by orders of magnitude (a cosine seen through a 150 px face chip vs a latent MSE seen through the
VAE), so without it the sign of the sum would be the sign of whichever loss is larger and the
other would be ignored. An identity gradient lives only on the face chips, so after the
normalisation it decides the sign there, and the dual-loss gradient decides it everywhere else.

Tensor contract: photos are (1, 3, H, W) float32 RGB in [0, 1], full resolution, on any device;
the polish runs on the surrogates' device (the photo crosses there once and back once, never per
step), so the identity encoders must live there too (``registry.place``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from dladiff_app.core.presets import ProtectionSettings
from dladiff_app.engine.device import to_device
from dladiff_app.engine.faces.align import antialiased_warps
from dladiff_app.engine.faces.types import Face, IdentityEncoder
from dladiff_app.engine.shield.driver import Box, Constant, Driver, Phase, grid_box
from dladiff_app.engine.shield.dual_term import dual_term
from dladiff_app.engine.shield.eot import (
    EotConfig,
    TransformParams,
    apply_transform,
    sample_transform,
)
from dladiff_app.engine.shield.face_region import FaceRegion
from dladiff_app.engine.shield.jnd_target import cap_faces
from dladiff_app.engine.shield.layer1 import Layer1Surrogates
from dladiff_app.engine.shield.layer2 import (
    ShieldOptions,
    clean_embeddings,
    eot_config_for,
    exact_regions,
    layer2_loss,
)
from dladiff_app.engine.shield.memory import StepDown
from dladiff_app.engine.shield.pgd import quantise_ste
from dladiff_app.engine.shield.precision import pixel_scale_for

log = logging.getLogger(__name__)


class _Cancel(Protocol):
    def check(self) -> None: ...


@dataclass
class PolishResult:
    """``protected``: (1, 3, H, W) float32 on the 8-bit grid, inside the box of
    :func:`polish_photo`. ``identity_before/after``: :func:`layer2_loss` of the quantised photo without
    EOT (sum over faces and encoders of cosine similarity to the clean embedding; lower is
    better) before the first and after the last step. ``dual_first/last``: the surrogates' dual
    loss seen at the first and the last step (random draws, so noisy; higher is better)."""

    protected: torch.Tensor
    steps_done: int
    identity_before: float
    identity_after: float
    dual_first: float
    dual_last: float


class PhotoIdentityTerm:
    """The polish's identity term: :func:`layer2_loss` on the face regions of the whole photo
    seen through its 8-bit file (straight-through rounding), with one random sharing
    transformation per step when ``eot_cfg`` is given (drawn from ``gen``). One variable, the
    (1, 3, H, W) photo; no gradient (None) when there is no face. Gradients see the encoders'
    crops pre-blurred by ``antialias`` (as layer 2's steps do, ``ShieldOptions.antialias``);
    :meth:`loss` alone measures on the exact crops."""

    name = "identity"

    def __init__(self, regions: Sequence[FaceRegion], encoders: Sequence[IdentityEncoder],
                 targets: Sequence[Mapping[str, torch.Tensor]], eot_cfg: EotConfig | None,
                 gen: torch.Generator, antialias: float = ShieldOptions().antialias) -> None:
        self.regions, self.encoders, self.targets = regions, encoders, targets
        self.eot_cfg, self.gen, self.antialias = eot_cfg, gen, antialias

    def loss(self, view: torch.Tensor, transform: TransformParams | None) -> torch.Tensor:
        total = view.new_zeros(())
        for region in self.regions:
            crop = region.crop(view)
            if transform is not None:
                crop = apply_transform(crop, transform)
            total = total + layer2_loss(crop, region.local_faces, self.encoders,
                                        [self.targets[i] for i in region.faces])
        return total

    def gradients(self, xs: Sequence[torch.Tensor], step: int
                  ) -> tuple[list[torch.Tensor | None], torch.Tensor]:
        transform = sample_transform(self.eot_cfg, self.gen) if self.eot_cfg is not None else None
        leaf = xs[0].detach().clone().requires_grad_(True)
        with antialiased_warps(self.antialias):
            loss = self.loss(quantise_ste(leaf), transform)
            grad = torch.autograd.grad(loss, leaf)[0] if loss.requires_grad else None
        return [grad], loss.detach()


def polish_photo(clean: torch.Tensor, current: torch.Tensor, faces: list[Face],
                 encoders: Sequence[IdentityEncoder], surrogates: Layer1Surrogates,
                 settings: ProtectionSettings, *, steps: int | None = None,
                 dual_weight: float = 1.0, cancel: _Cancel | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 generator_seed: int | None = None) -> PolishResult:
    """Polish one photo that both layers protected.

    ``clean``/``current``: (1, 3, H, W) float32 RGB [0, 1] on any device (the result comes
    back there), ``current`` what the two layers made of ``clean``; the result stays, per
    pixel, within ``settings.finetune_eps``/255 of ``clean`` or between ``clean`` and
    ``current``. ``faces``: detections on the clean photo (with dlib landmarks where a dlib
    encoder is used). ``steps``: default ``settings.polish_steps``; step size
    ``settings.step2``/255 (layer 2's). ``dual_weight``: lambda. With ``settings.eot`` the
    identity term sees one random sharing transformation per step, as in layer 2.
    ``cancel.check()`` runs before every step (raises ``Cancelled``); ``progress(done, total)``
    after every step. Deterministic for ``generator_seed`` (default ``settings.seed``) on the CPU.
    """
    if clean.shape != current.shape or clean.dim() != 4 or clean.shape[:2] != (1, 3):
        raise ValueError(f"clean {tuple(clean.shape)} and current {tuple(current.shape)} must "
                         "both be (1, 3, H, W)")
    eps_ft, alpha = settings.finetune_eps / 255.0, settings.step2 / 255.0
    total = settings.polish_steps if steps is None else int(steps)
    home, sur = clean.device, surrogates.sur
    clean = to_device(clean.detach().float(), sur.device)
    x = to_device(current.detach().float(), sur.device)
    # Layer 1's box on the whole photo, widened per pixel to hold what layer 2 already did on
    # the faces (its budget is on top of layer 1's there): the polish re-balances inside the
    # change the two layers made and never goes past either budget.
    lo_ft, hi_ft = grid_box(clean, eps_ft).bounds()
    box = Box(torch.minimum(lo_ft, x), torch.maximum(hi_ft, x))
    lo, hi = box.bounds()
    seed = settings.seed if generator_seed is None else int(generator_seed)
    gen_eot, gen_dual = torch.Generator().manual_seed(seed + 101), \
        torch.Generator().manual_seed(seed + 102)
    targets = clean_embeddings(clean, faces, encoders)
    regions = exact_regions(clean, faces, encoders, targets) if faces else []
    h, w = clean.shape[-2:]
    eot_cfg = eot_config_for(w, h) if settings.eot else None

    identity = PhotoIdentityTerm(regions, encoders, targets, eot_cfg, gen_eot)

    def identity_now(image: torch.Tensor) -> float:
        # (1, 3, H, W) [0, 1] -> identity loss of the 8-bit file it would be written as.
        with torch.no_grad():
            return float(identity.loss(torch.round(image * 255.0) / 255.0, None))

    before = identity_now(x)
    dual = dual_term(sur, StepDown(sur, 1, 1, surrogates.working_size, str(sur.device)),
                     surrogates.weights, pixel_scale_for(sur), gen_dual, quantise=True)
    # Identity down, the surrogates' loss up: each gradient normalised, the sign of the sum.
    driver = Driver([x], [box], [identity, dual], Constant(alpha), cancel=cancel,
                    progress=progress)
    (result,) = driver.run([Phase(total, {identity.name: 1.0, dual.name: -dual_weight})])
    x, done = driver.xs[0], driver.done
    dual_seen = result.losses.get(dual.name, [])
    protected = torch.minimum(torch.maximum(torch.round(x * 255.0) / 255.0, lo), hi)
    if faces:
        # The polish steps on the whole photo: the faces keep the visibility layer 2 promised.
        protected = cap_faces(clean, torch.round(current.detach().float() * 255.0) / 255.0,
                              protected, [tuple(map(float, f.box[:4])) for f in faces],
                              settings.face_jnd_target)
    after = identity_now(protected)
    log.info("Polish: %d steps, identity %.4f -> %.4f, dual loss %s", done, before, after,
             f"{dual_seen[0]:.4f} -> {dual_seen[-1]:.4f}" if dual_seen else "not run")
    return PolishResult(protected=protected.to(home), steps_done=done, identity_before=before,
                        identity_after=after,
                        dual_first=dual_seen[0] if dual_seen else float("nan"),
                        dual_last=dual_seen[-1] if dual_seen else float("nan"))
