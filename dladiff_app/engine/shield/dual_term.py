"""Layer 1's losses over an album as :class:`driver.Term` objects: the attention-map loss
(stage 1), S_dyn's denoising loss (stage 2) and the old dual denoising loss (the polish, the
``"dual"`` objective), all through one :class:`SurrogateTerm`.

Each step draws the attacker's views of every photo (``shield.views``: crop offset, mirror,
instance prompt) and one noise/timestep draw per view, then evaluates the album in
micro-batches on the surrogate's device; running out of memory steps down and repeats the same
views (``shield.memory.StepDown``). A term given the clean photos sees each clean photo through
the same view as its perturbed copy (the attention loss's reference). fp16 bases get pixel loss
scaling (sign steps do not see the scale). The loss reported is the album mean, a 0-d tensor on
the surrogate's device.

Tensor contract: variables are the album's photos, (3, H_i, W_i) or (1, 3, H_i, W_i) float32
RGB in [0, 1] at full resolution, on any device (the gradients come back there); the clean
photos have the same shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import partial

import torch

from dladiff_app.engine.shield import surrogate as sg
from dladiff_app.engine.shield.attention import (
    DEFAULT_CHOICE,
    AttentionChoice,
    AttentionStore,
    capturing,
)
from dladiff_app.engine.shield.dual import (
    LatentTerm,
    attention_terms,
    denoise_terms,
    dual_terms,
    total_loss,
)
from dladiff_app.engine.shield.memory import StepDown
from dladiff_app.engine.shield.memory_plan import split_gradient
from dladiff_app.engine.shield.pgd import quantise_ste
from dladiff_app.engine.shield.precision import PixelLossScale
from dladiff_app.engine.shield.resize import to_working
from dladiff_app.engine.shield.views import CENTRE_ONLY, View, ViewPolicy, to_view

# (the clean counterparts of a batch's working-size images or None, draw) -> the loss's terms
# as functions of the perturbed images' latents (``shield.dual``)
AlbumTerms = Callable[["torch.Tensor | None", sg.NoiseDraw], Sequence[LatentTerm]]


class SurrogateTerm:
    """``name``: the term's name in a schedule. ``terms``: the per-batch loss, split at the
    latents (each part differentiated on its own when the album's plan says
    ``split_backward``). ``album``: the micro-batching and step-down state (its ``size`` is the
    working size now). ``noise``: draws the noise and timesteps, ``view_gen`` the views and
    prompts (CPU generators). ``clean``: the clean photos, when ``terms`` needs them.
    ``quantise``: see each photo through the 8-bit file it will be written as
    (straight-through rounding; the polish).
    ``around``: a context every step's forward and backward passes run inside (the attention
    capture)."""

    def __init__(self, sur: sg.Surrogate, album: StepDown, terms: AlbumTerms,
                 pixel_scale: PixelLossScale, noise: torch.Generator, *, name: str,
                 clean: Sequence[torch.Tensor] | None = None,
                 policy: ViewPolicy = CENTRE_ONLY, view_gen: torch.Generator | None = None,
                 quantise: bool = False,
                 around: Callable[[], AbstractContextManager[object]] | None = None) -> None:
        if policy != CENTRE_ONLY and view_gen is None:
            raise ValueError("random attacker views need a generator")
        self.name, self.terms, self.clean = name, terms, clean
        self.around = around or nullcontext
        self.sur, self.album = sur, album
        self.pixel_scale, self.noise, self.view_gen = pixel_scale, noise, view_gen
        self.policy, self.quantise = policy, quantise
        self.n_prompts = int(sur.text_embeddings.shape[0])

    def gradients(self, xs: Sequence[torch.Tensor], step: int
                  ) -> tuple[list[torch.Tensor | None], torch.Tensor]:
        views: list[list[View]] = []
        prompts: list[torch.Tensor] | None = None
        if self.policy != CENTRE_ONLY and self.view_gen is not None:
            # Drawn before the retry: a step-down repeats the same views.
            views = [self.policy.draw(int(x.shape[-2]), int(x.shape[-1]), self.album.size,
                                      self.view_gen) for x in xs]
            if self.policy.prompts:  # one instance prompt per view
                prompts = [torch.randint(0, self.n_prompts, (len(v),), generator=self.view_gen)
                           for v in views]
        with self.around():
            grads, loss = self.album.retry(partial(self._album_gradient, xs, views, prompts))
        return list(grads), loss

    def _crops(self, images: Sequence[torch.Tensor], idx: list[int], views: list[list[View]]
               ) -> torch.Tensor:
        size = self.album.size
        if views:
            return torch.cat([to_view(images[j], size, v) for j, i in enumerate(idx)
                              for v in views[i]])
        return torch.cat([to_working(x, size) for x in images])

    def _album_gradient(self, xs: Sequence[torch.Tensor], views: list[list[View]],
                        prompts: list[torch.Tensor] | None
                        ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Gradients of the album's loss (each photo's views averaged) per photo, and the
        album mean loss."""
        sur, album, n = self.sur, self.album, len(xs)
        grads: list[torch.Tensor] = [torch.zeros_like(x) for x in xs]
        loss_sum = torch.zeros((), device=sur.device)
        for idx in album.chunks():
            leaves = [xs[i].detach().to(sur.device).requires_grad_(True) for i in idx]
            seen = [quantise_ste(x) for x in leaves] if self.quantise else leaves
            crops = self._crops(seen, idx, views)
            clean = None if self.clean is None else \
                self._crops([self.clean[i].to(sur.device) for i in idx], idx, views)
            rows = len(crops)
            draw = sg.NoiseDraw.draw(sur, rows, album.size, self.noise, prompts=None
                                     if prompts is None else torch.cat([prompts[i] for i in idx]))
            # Mean over the chunk's views = mean over its photos (each has as many views).
            # The reference passes (if any) before the encode: the VAE's graph is not alive
            # during them.
            terms = self.terms(clean, draw)
            head, factor = sg.encode(sur, crops, draw), len(idx) / n
            if album.split_backward:  # one UNet graph alive at a time (memory_plan)
                step_grads, loss = split_gradient(head, terms, leaves, self.pixel_scale, factor)
            else:
                loss = total_loss(terms, head)
                step_grads = self.pixel_scale.grad(loss * factor, leaves)
            for i, g in zip(idx, step_grads, strict=True):
                grads[i] = g.detach().to(xs[i].device)
            loss_sum = loss_sum + loss.detach() * len(idx)
        return grads, loss_sum / n


def dual_term(sur: sg.Surrogate, album: StepDown, weights: tuple[float, float],
              pixel_scale: PixelLossScale, noise: torch.Generator, *, name: str = "dual",
              policy: ViewPolicy = CENTRE_ONLY, view_gen: torch.Generator | None = None,
              quantise: bool = False) -> SurrogateTerm:
    """The dual denoising loss ``w_dyn * L(S_dyn) + w_prior * L(S_prior)`` as a term."""
    return SurrogateTerm(sur, album, lambda _c, d: dual_terms(sur, d, weights),
                         pixel_scale, noise, name=name, policy=policy, view_gen=view_gen,
                         quantise=quantise)


def attention_term(sur: sg.Surrogate, album: StepDown, clean: Sequence[torch.Tensor],
                   pixel_scale: PixelLossScale, noise: torch.Generator, *,
                   name: str = "attention", policy: ViewPolicy = CENTRE_ONLY,
                   view_gen: torch.Generator | None = None,
                   choice: AttentionChoice = DEFAULT_CHOICE) -> SurrogateTerm:
    """``L_att`` (static surrogate on ``clean`` vs dynamic one on the photos, the layers of
    ``choice``) as a term."""
    store = AttentionStore()

    def terms(ref: torch.Tensor | None, draw: sg.NoiseDraw) -> Sequence[LatentTerm]:
        assert ref is not None
        return attention_terms(sur, ref, draw, store)
    return SurrogateTerm(sur, album, terms, pixel_scale, noise, name=name, clean=clean,
                         policy=policy, view_gen=view_gen,
                         around=lambda: capturing(sur.unet, store, choice))


def denoise_term(sur: sg.Surrogate, album: StepDown, pixel_scale: PixelLossScale,
                 noise: torch.Generator, *, name: str = "denoise",
                 policy: ViewPolicy = CENTRE_ONLY,
                 view_gen: torch.Generator | None = None) -> SurrogateTerm:
    """S_dyn's denoising loss as a term."""
    return SurrogateTerm(sur, album, lambda _c, d: denoise_terms(sur, d), pixel_scale,
                         noise, name=name, policy=policy, view_gen=view_gen)
