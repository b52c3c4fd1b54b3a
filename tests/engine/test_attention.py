"""Attention capture on the tiny random Stable Diffusion UNet (``shield.attention``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from dladiff_app.engine.shield import surrogate as sg
from dladiff_app.engine.shield.attention import (
    CROSS,
    EVERY_LAYER,
    SELF,
    AttentionChoice,
    AttentionStore,
    attention_distance,
    capturing,
    chosen_layers,
    layer_kind,
    layer_level,
)
from tests.fixtures.tiny_sd import TINY_SD_RESOLUTION

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sur(tiny_sd_dir: Path) -> sg.Surrogate:
    s = sg.load_surrogate(tiny_sd_dir)
    sg.add_lora(s, "a", seed=3)
    # A LoRA that is not the identity, so the capture is shown to pass through adapters.
    with torch.no_grad():
        for p in sg.lora_parameters(s, "a"):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(5)) * 0.05)
    return s


def _inputs(sur: sg.Surrogate, n: int = 2) -> tuple[torch.Tensor, sg.NoiseDraw]:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, TINY_SD_RESOLUTION, TINY_SD_RESOLUTION, generator=gen)
    return images, sg.NoiseDraw.draw(sur, n, TINY_SD_RESOLUTION, gen,
                                     prompts=torch.tensor([0, 1][:n]))


def test_layer_names_levels_and_kinds(sur: sg.Surrogate) -> None:
    names = list(sur.unet.attn_processors)
    # Tiny UNet: 2 levels; down 0 (2 transformers) at level 0, down 1 and mid at level 1,
    # up 0 (3 transformers) at level 1, up 1 at level 0.
    assert layer_level("down_blocks.0.attentions.1.transformer_blocks.0.attn1.processor", 2) == 0
    assert layer_level("mid_block.attentions.0.transformer_blocks.0.attn2.processor", 2) == 1
    assert layer_level("up_blocks.0.attentions.2.transformer_blocks.0.attn2.processor", 2) == 1
    assert layer_level("up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor", 4) == 2
    assert {layer_kind(n) for n in names} == {SELF, CROSS}
    every = chosen_layers(sur.unet, EVERY_LAYER)
    default = chosen_layers(sur.unet)
    assert every == names
    # Default: every cross layer, self-attention below the top level only.
    assert {n for n in default if layer_kind(n) == CROSS} == {n for n in names if ".attn2." in n}
    assert all(layer_level(n, 2) >= 1 for n in default if layer_kind(n) == SELF)
    assert any(layer_kind(n) == SELF for n in default)
    assert not chosen_layers(sur.unet, AttentionChoice(None, None))


def _hooks(sur: sg.Surrogate, names: list[str]) -> tuple[dict[str, Any], list[Any]]:
    """Record each chosen layer's V (to_v output) and its attention output (to_out[0]'s
    input) with forward hooks, independently of the processor."""
    seen: dict[str, Any] = {}
    handles = []
    modules = dict(sur.unet.named_modules())
    for name in names:
        attn = modules[name.removesuffix(".processor")]
        handles.append(attn.to_v.register_forward_hook(
            lambda m, i, o, n=name: seen.__setitem__(("v", n), o.detach())))
        handles.append(attn.to_out[0].register_forward_hook(
            lambda m, i, o, n=name: seen.__setitem__(("out", n), i[0].detach())))
    return seen, handles


def test_probabilities_times_v_give_the_layer_output(sur: sg.Surrogate) -> None:
    images, draw = _inputs(sur)
    store = AttentionStore()
    sg.use_adapter(sur, "a")
    with torch.no_grad(), capturing(sur.unet, store, EVERY_LAYER) as names:
        seen, handles = _hooks(sur, names)
        try:
            sg.predict(sur, sg.encode(sur, images, draw), draw)
        finally:
            for h in handles:
                h.remove()
        maps = store.take()
    assert set(maps) == set(names)
    assert not store.maps
    modules = dict(sur.unet.named_modules())
    for name in names:
        probs = maps[name]
        heads = modules[name.removesuffix(".processor")].heads
        n, h, q, k = probs.shape
        assert (n, h) == (2, heads)
        assert k == (77 if layer_kind(name) == CROSS else q)
        torch.testing.assert_close(probs.sum(-1), torch.ones(n, h, q), atol=1e-5, rtol=0)
        v = seen[("v", name)]  # (N, K, heads * d)
        v = v.view(n, k, heads, -1).transpose(1, 2)  # (N, heads, K, d)
        out = (probs @ v).transpose(1, 2).reshape(n, q, -1)
        torch.testing.assert_close(out, seen[("out", name)], atol=1e-5, rtol=1e-4)


def test_capture_does_not_change_the_unet_output(sur: sg.Surrogate) -> None:
    images, draw = _inputs(sur)
    sg.use_adapter(sur, "a")
    before = dict(sur.unet.attn_processors)
    with torch.no_grad():
        latents = sg.encode(sur, images, draw)
        plain = sg.predict(sur, latents, draw)
        for choice in (EVERY_LAYER, AttentionChoice()):
            with capturing(sur.unet, AttentionStore(), choice):
                captured = sg.predict(sur, latents, draw)
            torch.testing.assert_close(captured, plain, atol=1e-5, rtol=1e-4)
    after = sur.unet.attn_processors
    assert all(after[k] is before[k] for k in before), "processors must be restored"


def _distance_and_gradient(sur: sg.Surrogate, images: torch.Tensor, draw: sg.NoiseDraw
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention distance (N,) of ``images`` to their mirror images (no gradient on the
    reference), and its sum's gradient with respect to ``images``."""
    store = AttentionStore()
    x = images.clone().requires_grad_(True)
    with capturing(sur.unet, store):
        with torch.no_grad():
            sg.predict(sur, sg.encode(sur, images.flip(-1), draw), draw)
        reference = store.take()
        sg.predict(sur, sg.encode(sur, x, draw), draw)
        loss = attention_distance(reference, store.take())
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


def test_gradients_reach_the_pixels_through_the_maps(sur: sg.Surrogate) -> None:
    images, draw = _inputs(sur)
    sg.use_adapter(sur, "a")
    store = AttentionStore()
    loss, grad = _distance_and_gradient(sur, images, draw)
    assert loss.shape == (2,) and bool((loss > 0).all())
    assert float(grad.abs().sum()) > 0
    # Through the maps alone: the gradient of one cross map entry also reaches the pixels.
    x2 = images.clone().requires_grad_(True)
    with capturing(sur.unet, store, AttentionChoice(cross_min_level=0, self_min_level=None)):
        sg.predict(sur, sg.encode(sur, x2, draw), draw)
        first = next(iter(store.take().values()))
        (grad2,) = torch.autograd.grad(first[:, :, :, 4].sum(), x2)
    assert float(grad2.abs().sum()) > 0


def test_gradient_checkpointing_recomputes_through_the_capture(tiny_sd_dir: Path) -> None:
    """A checkpointed UNet recomputes the layers in the backward pass: the capture must still
    be in place then, and give the gradient a plain backward gives."""
    s = sg.load_surrogate(tiny_sd_dir)
    images, draw = _inputs(s)
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            s.unet.enable_gradient_checkpointing()
        grads.append(_distance_and_gradient(s, images, draw)[1])
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-4)


def test_distance_is_zero_for_equal_maps_and_checks_layers() -> None:
    a = {"l": torch.softmax(torch.randn(2, 4, 16, 77), -1)}
    assert torch.equal(attention_distance(a, a), torch.zeros(2))
    b = {"l": a["l"].roll(1, dims=-1)}
    expected = (b["l"].mean(1) - a["l"].mean(1)).pow(2).sum(dim=(1, 2))
    torch.testing.assert_close(attention_distance(a, b), expected)
    with pytest.raises(ValueError, match="differ in layers"):
        attention_distance(a, {"m": a["l"]})
