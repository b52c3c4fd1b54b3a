"""The dual-surrogate term of the objective: layer 1's ``w_dyn * L(S_dyn, x) + w_prior *
L(S_prior, x)`` (``shield.dual``) over an album, as a :class:`driver.Term`.

Each step draws the attacker's views of every photo (``shield.views``: crop offset, mirror,
instance prompt) and one noise/timestep draw per view, then evaluates the album in
micro-batches on the surrogate's device; running out of memory steps down and repeats the same
views (``shield.memory.StepDown``). fp16 bases get pixel loss scaling (sign steps do not see
the scale). The loss reported is the album mean, a 0-d tensor on the surrogate's device.

Tensor contract: variables are the album's photos, (3, H_i, W_i) or (1, 3, H_i, W_i) float32
RGB in [0, 1] at full resolution, on any device (the gradients come back there).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch

from dladiff_app.engine.shield import surrogate as sg
from dladiff_app.engine.shield.dual import dual_loss, dual_terms
from dladiff_app.engine.shield.memory import StepDown
from dladiff_app.engine.shield.memory_plan import split_gradient
from dladiff_app.engine.shield.pgd import quantise_ste
from dladiff_app.engine.shield.precision import PixelLossScale
from dladiff_app.engine.shield.resize import to_working
from dladiff_app.engine.shield.views import CENTRE_ONLY, View, ViewPolicy, to_view


class DualSurrogateTerm:
    """``name``: the term's name in a schedule. ``album``: the micro-batching and step-down
    state (its ``size`` is the working size now). ``noise``: draws the noise and timesteps,
    ``view_gen`` the views and prompts (CPU generators). ``quantise``: see each photo through
    the 8-bit file it will be written as (straight-through rounding; the polish)."""

    def __init__(self, sur: sg.Surrogate, album: StepDown, weights: tuple[float, float],
                 pixel_scale: PixelLossScale, noise: torch.Generator, *,
                 policy: ViewPolicy = CENTRE_ONLY, view_gen: torch.Generator | None = None,
                 quantise: bool = False, name: str = "dual") -> None:
        if policy != CENTRE_ONLY and view_gen is None:
            raise ValueError("random attacker views need a generator")
        self.name = name
        self.sur, self.album, self.weights = sur, album, weights
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
        grads, loss = self.album.retry(partial(self._album_gradient, xs, views, prompts))
        return list(grads), loss

    def _album_gradient(self, xs: Sequence[torch.Tensor], views: list[list[View]],
                        prompts: list[torch.Tensor] | None
                        ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Gradients of the album's dual loss (each photo's views averaged) per photo, and
        the album mean loss."""
        sur, album, n = self.sur, self.album, len(xs)
        size = album.size
        grads: list[torch.Tensor] = [torch.zeros_like(x) for x in xs]
        loss_sum = torch.zeros((), device=sur.device)
        for idx in album.chunks():
            leaves = [xs[i].detach().to(sur.device).requires_grad_(True) for i in idx]
            seen = [quantise_ste(x) for x in leaves] if self.quantise else leaves
            if views:
                crops = [to_view(x, size, v) for i, x in zip(idx, seen, strict=True)
                         for v in views[i]]
                rows = [i for i in idx for _ in views[i]]
            else:
                crops, rows = [to_working(x, size) for x in seen], list(idx)
            draw = sg.NoiseDraw.draw(sur, len(rows), size, self.noise, prompts=None
                                     if prompts is None else torch.cat([prompts[i] for i in idx]))
            # Mean over the chunk's views = mean over its photos (each has as many views).
            if album.split_backward:  # one UNet graph alive at a time (memory_plan)
                step_grads, loss = split_gradient(
                    sg.encode(sur, torch.cat(crops), draw), dual_terms(sur, draw, self.weights),
                    leaves, self.pixel_scale, len(idx) / n)
            else:
                loss = dual_loss(sur, torch.cat(crops), draw, self.weights)
                step_grads = self.pixel_scale.grad(loss * (len(idx) / n), leaves)
            for i, g in zip(idx, step_grads, strict=True):
                grads[i] = g.detach().to(xs[i].device)
            loss_sum = loss_sum + loss.detach() * len(idx)
        return grads, loss_sum / n
