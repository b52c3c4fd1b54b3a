"""Attention maps of the surrogate UNet, materialised only where layer 1's loss reads them.

DSUR's loss (METHOD.md, "Attention loss") compares the UNet's cross-attention maps (image
queries against the prompt tokens) and self-attention maps (image against image) of two
surrogates. diffusers' default processor (SDPA) never forms the probabilities; this module's
:class:`CaptureProcessor` does, for the chosen layers only, and hands them to an
:class:`AttentionStore`; every other layer keeps the processor it had.

Which layers (our choice, measured in ``benchmarks/results/attention_layers_cpu.md``): every
cross-attention layer (its map is queries x 77 tokens: small at any level) and the
self-attention layers at least one downsample below the latent grid. At 512 px the top level's
self-attention map is 4096 x 4096 per head, 512 MB per photo and layer in fp32 and kept for the
backward pass; one level down it is 32 MB. :class:`AttentionChoice` names the levels.

Tensor contract: a captured map is (N, heads, Q, K) in the UNet's compute dtype, with the
autograd graph attached (it is the very tensor the layer multiplies with V), Q the image
tokens (h x w of the layer's feature map), K the prompt tokens (cross) or Q (self); rows sum
to 1. :func:`attention_distance` reduces two sets of maps to one fp32 scalar per image.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

SELF, CROSS = "self", "cross"
_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.|^mid_block\.")


@dataclass(frozen=True)
class AttentionChoice:
    """Which attention layers are captured: cross-attention at ``cross_min_level`` and
    deeper, self-attention at ``self_min_level`` and deeper (level 0 = the latent grid, each
    level one 2x downsample below it; None: that kind is not captured)."""

    cross_min_level: int | None = 0
    self_min_level: int | None = 1

    def wants(self, kind: str, level: int) -> bool:
        least = self.cross_min_level if kind == CROSS else self.self_min_level
        return least is not None and level >= least


DEFAULT_CHOICE = AttentionChoice()
EVERY_LAYER = AttentionChoice(cross_min_level=0, self_min_level=0)


def layer_level(name: str, n_levels: int) -> int:
    """The resolution level of the attention processor ``name`` of a UNet with ``n_levels``
    blocks per side (``len(block_out_channels)``): down block i sits at level i, the middle
    block at the deepest level, up block j at ``n_levels - 1 - j``."""
    m = _BLOCK.match(name)
    if m is None:
        raise ValueError(f"not a UNet attention layer name: {name!r}")
    if m.group(1) is None:
        return n_levels - 1
    index = int(m.group(2))
    return index if m.group(1) == "down_blocks" else n_levels - 1 - index


def layer_kind(name: str) -> str:
    """``"self"`` for a transformer block's attn1, ``"cross"`` for its attn2."""
    if ".attn1." in name:
        return SELF
    if ".attn2." in name:
        return CROSS
    raise ValueError(f"attention layer {name!r} is neither attn1 nor attn2")


@dataclass
class AttentionStore:
    """The maps captured during the last forward passes, by layer name (see the module's
    tensor contract)."""

    maps: dict[str, torch.Tensor] = field(default_factory=dict)

    def clear(self) -> None:
        self.maps = {}

    def take(self) -> dict[str, torch.Tensor]:
        """The maps of the passes since the last take/clear, leaving the store empty."""
        maps, self.maps = self.maps, {}
        return maps


class CaptureProcessor:
    """diffusers' plain attention computation (the ``AttnProcessor`` steps: optional spatial
    and group norms, q/k/v projections, scaled softmax of q k^T, times v, output projection,
    residual and rescale) with the probabilities stored under ``name`` in ``store``. The
    projections are called as modules, so LoRA adapters on them take part."""

    def __init__(self, store: AttentionStore, name: str) -> None:
        self.store, self.name = store, name

    def __call__(self, attn: Any, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, seq_len, _ = (hidden_states.shape if encoder_hidden_states is None
                             else encoder_hidden_states.shape)
        attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(attn.head_to_batch_dim(query), key, attention_mask)
        # (N * heads, Q, K) -> (N, heads, Q, K): a view, no copy; autograd keeps it anyway.
        self.store.maps[self.name] = probs.view(-1, attn.heads, *probs.shape[1:])
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height,
                                                                    width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def chosen_layers(unet: Any, choice: AttentionChoice = DEFAULT_CHOICE) -> list[str]:
    """Names (keys of ``unet.attn_processors``) of the layers ``choice`` captures."""
    n_levels = len(unet.config.block_out_channels)
    return [name for name in unet.attn_processors
            if choice.wants(layer_kind(name), layer_level(name, n_levels))]


@contextlib.contextmanager
def capturing(unet: Any, store: AttentionStore,
              choice: AttentionChoice = DEFAULT_CHOICE) -> Iterator[list[str]]:
    """Install :class:`CaptureProcessor` on the layers ``choice`` names for the block's
    duration (the other layers keep their processors; all are restored and ``store`` emptied
    afterwards). Keep the block open until the backward pass is done: gradient checkpointing
    recomputes the layers then, and must meet the same processors. Yields the captured layer
    names."""
    before = dict(unet.attn_processors)
    names = chosen_layers(unet, choice)
    unet.set_attn_processor({name: CaptureProcessor(store, name) if name in names else proc
                             for name, proc in before.items()})
    try:
        yield names
    finally:
        unet.set_attn_processor(before)
        store.clear()  # maps a checkpointed backward recomputed are not wanted


def attention_distance(reference: dict[str, torch.Tensor], moved: dict[str, torch.Tensor]
                       ) -> torch.Tensor:
    """``sum over layers ||M_ref - M_moved||^2`` per image (N,) fp32: the squared Frobenius
    distance of the head-averaged maps (our reading of the paper's eq. 8, which does not say
    how heads combine), cross and self layers alike. Both dicts must hold the same layers."""
    if reference.keys() != moved.keys() or not reference:
        raise ValueError(f"attention maps differ in layers: {sorted(reference)} vs "
                         f"{sorted(moved)}")
    total: torch.Tensor | None = None
    for name, ref in reference.items():
        diff = moved[name].float().mean(dim=1) - ref.float().mean(dim=1)
        per_image = diff.pow(2).sum(dim=(1, 2))
        total = per_image if total is None else total + per_image
    assert total is not None
    return total


def map_bytes(kind: str, queries: int, heads: int, tokens: int = 77, bytes_per: int = 4) -> int:
    """Bytes of one captured map for one image: ``heads x queries x keys`` (keys: ``tokens``
    for cross-attention, ``queries`` for self-attention)."""
    keys = tokens if kind == CROSS else queries
    return heads * queries * keys * bytes_per
