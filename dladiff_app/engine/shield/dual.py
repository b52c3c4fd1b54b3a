"""The losses of layer 1 (DSUR + ADFT), written once for every caller.

The two surrogates are the ``"dyn"`` (dynamic, S_dyn) and ``"prior"`` (static, S_static) LoRA
adapters on one frozen base. Every loss here takes working-size images and one noise/timestep/
prompt draw (``surrogate.NoiseDraw``) shared by every pass it makes:

- :func:`attention_loss`: the paper's eq. 8, ``||Mc_static(x) - Mc_dyn(x')||^2 +
  ||Ms_static(x) - Ms_dyn(x')||^2`` with the static surrogate on the CLEAN images ``x`` as the
  reference and the dynamic one on the perturbed images ``x'`` (layer 1's stage 1);
- :func:`denoise_loss`: S_dyn's DreamBooth denoising loss on ``x'`` (stage 2);
- :func:`dual_loss`: ``w_dyn * L(S_dyn, x') + w_prior * L(S_prior, x')``, the objective an
  earlier reading of the paper used; the polish and the ``"dual"`` objective still use it.
"""

from __future__ import annotations

import torch

from dladiff_app.engine.shield import surrogate as sg
from dladiff_app.engine.shield.attention import AttentionStore, attention_distance

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


def denoise_loss(sur: sg.Surrogate, work: torch.Tensor, draw: sg.NoiseDraw) -> torch.Tensor:
    """S_dyn's denoising loss on ``work`` (as :func:`dual_loss`'s images), 0-d fp32 mean."""
    latents = sg.encode(sur, work, draw)
    sg.use_adapter(sur, DYN)
    return sg.unet_loss(sur, latents, draw)


def attention_loss(sur: sg.Surrogate, work: torch.Tensor, clean: torch.Tensor,
                   draw: sg.NoiseDraw, store: AttentionStore) -> torch.Tensor:
    """``L_att``: the static surrogate's attention maps on ``clean`` against the dynamic one's
    on ``work``, both (N, 3, S, S) RGB [0, 1] seen through the same view, with the same latent
    sample, noise, timestep and prompt (``draw``). The capture processors must be installed
    (:func:`attention.capturing` with ``store``) until the backward pass is done: gradient
    checkpointing recomputes the layers then. Returns the mean over the N images of
    :func:`attention.attention_distance` as a 0-d fp32 tensor, differentiable with respect to
    ``work`` only (the reference pass runs without gradient)."""
    store.clear()
    with torch.no_grad():
        sg.use_adapter(sur, PRIOR)
        sg.predict(sur, sg.encode(sur, clean, draw), draw)
        reference = store.take()
    sg.use_adapter(sur, DYN)
    sg.predict(sur, sg.encode(sur, work, draw), draw)
    return attention_distance(reference, store.take()).mean()
