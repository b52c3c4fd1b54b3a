"""The dual-surrogate loss of layer 1 (DSUR), written once for every caller.

``w_dyn * L(S_dyn, x) + w_prior * L(S_prior, x)`` (METHOD.md): the two surrogates are the
``"dyn"`` and ``"prior"`` LoRA adapters on one frozen base, and they share one VAE encode of
the images and one noise/timestep draw, so the pair costs one encode and two UNet passes.
Layer 1's PGD, the evaluation of a finished album and the polish all call :func:`dual_loss`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dladiff_app.engine.shield import surrogate as sg

DYN, PRIOR = "dyn", "prior"


def dual_loss(sur: sg.Surrogate, work: torch.Tensor, draw: sg.NoiseDraw,
              weights: tuple[float, float]) -> torch.Tensor:
    """The dual loss of working-size images.

    ``work``: (N, 3, S, S) float RGB [0, 1] on the surrogate's device (may require grad);
    ``draw``: N noise/timestep/prompt draws; ``weights``: (w_dyn, w_prior). Returns the mean
    over the N images as a 0-d fp32 tensor, differentiable with respect to ``work`` through the
    VAE. Leaves the ``"prior"`` adapter active."""
    latents = sg.encode(sur, work, draw)
    dyn, prior = dual_terms(sur, draw, weights)
    return dyn(latents) + prior(latents)


def dual_terms(sur: sg.Surrogate, draw: sg.NoiseDraw, weights: tuple[float, float]
               ) -> tuple[Callable[[torch.Tensor], torch.Tensor], ...]:
    """The two weighted terms of the dual loss as functions of the latents (N, 4, S/8, S/8):
    ``w_dyn * L(S_dyn)`` and ``w_prior * L(S_prior)``, each a 0-d fp32 tensor (each switches
    to its adapter first). Taken apart so each can be differentiated on its own
    (``memory_plan.split_gradient``)."""
    w_dyn, w_prior = weights

    def term(name: str, weight: float) -> Callable[[torch.Tensor], torch.Tensor]:
        def loss(latents: torch.Tensor) -> torch.Tensor:
            sg.use_adapter(sur, name)
            return weight * sg.unet_loss(sur, latents, draw)
        return loss
    return term(DYN, w_dyn), term(PRIOR, w_prior)
