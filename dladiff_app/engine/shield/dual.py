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

from collections.abc import Callable, Sequence

import torch

from dladiff_app.engine.shield import surrogate as sg
from dladiff_app.engine.shield.attention import AttentionStore, attention_distance

DYN, PRIOR = "dyn", "prior"

# The losses here split at the latents: one VAE encode of the perturbed images, then one or
# more terms, each a function of those latents (N, 4, S/8, S/8) to a 0-d fp32 tensor that
# switches to its adapter first. Taken apart so each term can be differentiated on its own
# (``memory_plan.split_gradient``): only one UNet graph is alive at a time.
LatentTerm = Callable[[torch.Tensor], torch.Tensor]


def dual_loss(sur: sg.Surrogate, work: torch.Tensor, draw: sg.NoiseDraw,
              weights: tuple[float, float]) -> torch.Tensor:
    """The dual loss of working-size images.

    ``work``: (N, 3, S, S) float RGB [0, 1] on the surrogate's device (may require grad);
    ``draw``: N noise/timestep/prompt draws; ``weights``: (w_dyn, w_prior). Returns the mean
    over the N images as a 0-d fp32 tensor, differentiable with respect to ``work`` through the
    VAE. Leaves the ``"prior"`` adapter active."""
    latents = sg.encode(sur, work, draw)
    return total_loss(dual_terms(sur, draw, weights), latents)


def attention_loss(sur: sg.Surrogate, work: torch.Tensor, clean: torch.Tensor,
                   draw: sg.NoiseDraw, store: AttentionStore) -> torch.Tensor:
    """``L_att``: the static surrogate's attention maps on ``clean`` against the dynamic one's
    on ``work``, both (N, 3, S, S) RGB [0, 1] seen through the same view, with the same latent
    sample, noise, timestep and prompt (``draw``). The capture processors must be installed
    (:func:`attention.capturing` with ``store``) until the backward pass is done: gradient
    checkpointing recomputes the layers then. Returns the mean over the N images of
    :func:`attention.attention_distance` as a 0-d fp32 tensor, differentiable with respect to
    ``work`` only (the reference pass runs without gradient)."""
    terms = attention_terms(sur, clean, draw, store)
    return total_loss(terms, sg.encode(sur, work, draw))


def total_loss(terms: Sequence[LatentTerm], latents: torch.Tensor) -> torch.Tensor:
    """The sum of ``terms`` at ``latents``, one graph (see :data:`LatentTerm`)."""
    total = terms[0](latents)
    for term in terms[1:]:
        total = total + term(latents)
    return total


def dual_terms(sur: sg.Surrogate, draw: sg.NoiseDraw, weights: tuple[float, float]
               ) -> tuple[LatentTerm, ...]:
    """The two weighted terms of the dual loss: ``w_dyn * L(S_dyn)`` and
    ``w_prior * L(S_prior)``."""
    w_dyn, w_prior = weights
    return _adapter_term(sur, DYN, w_dyn, draw), _adapter_term(sur, PRIOR, w_prior, draw)


def denoise_terms(sur: sg.Surrogate, draw: sg.NoiseDraw) -> tuple[LatentTerm, ...]:
    """S_dyn's denoising loss, one term."""
    return (_adapter_term(sur, DYN, 1.0, draw),)


def _adapter_term(sur: sg.Surrogate, name: str, weight: float, draw: sg.NoiseDraw
                  ) -> LatentTerm:
    def loss(latents: torch.Tensor) -> torch.Tensor:
        sg.use_adapter(sur, name)
        return weight * sg.unet_loss(sur, latents, draw)
    return loss


def attention_terms(sur: sg.Surrogate, clean: torch.Tensor, draw: sg.NoiseDraw,
                    store: AttentionStore) -> tuple[LatentTerm, ...]:
    """``L_att`` as one term of the perturbed images' latents (see :func:`attention_loss`):
    the static surrogate's reference pass on ``clean`` runs here, at once and without
    gradient; the term runs the dynamic surrogate's pass and compares the maps."""
    store.clear()
    with torch.no_grad():
        sg.use_adapter(sur, PRIOR)
        sg.predict(sur, sg.encode(sur, clean, draw), draw)
        reference = store.take()

    def loss(latents: torch.Tensor) -> torch.Tensor:
        sg.use_adapter(sur, DYN)
        sg.predict(sur, latents, draw)
        return attention_distance(reference, store.take()).mean()
    return (loss,)
