"""The dual-surrogate loss of layer 1 (DSUR), written once for every caller.

``w_dyn * L(S_dyn, x) + w_prior * L(S_prior, x)`` (METHOD.md): the two surrogates are the
``"dyn"`` and ``"prior"`` LoRA adapters on one frozen base, and they share one VAE encode of
the images and one noise/timestep draw, so the pair costs one encode and two UNet passes.
Layer 1's PGD, the evaluation of a finished album and the polish all call :func:`dual_loss`.
"""

from __future__ import annotations

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
    w_dyn, w_prior = weights
    latents = sg.encode(sur, work, draw)
    sg.use_adapter(sur, DYN)
    loss = w_dyn * sg.unet_loss(sur, latents, draw)
    sg.use_adapter(sur, PRIOR)
    return loss + w_prior * sg.unet_loss(sur, latents, draw)
