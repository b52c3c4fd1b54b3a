"""Layer 1's three ADFT stages each move what they should and nothing else, and its budget is
``finetune_eps`` (not the zero-shot ``eps``): tiny random SD, one small photo, no EOT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dladiff_app.core.presets import ProtectionSettings
from dladiff_app.engine.shield import surrogate as sg
from dladiff_app.engine.shield.dual import DYN, PRIOR
from dladiff_app.engine.shield.layer1 import protect_album_layer1
from tests.fixtures.tiny_sd import TINY_SD_RESOLUTION

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = ProtectionSettings(eps=3, eps_ft=10, alpha1=2, layer1_rounds=2, layer1_pgd_steps=0,
                          layer1_denoise_steps=0, layer1_lora_steps=0, prior_steps=2,
                          eot=False, seed=1)


def _photo(seed: int) -> torch.Tensor:
    low = torch.rand(1, 3, 8, 10, generator=torch.Generator().manual_seed(seed))
    img = F.interpolate(low, size=(64, 80), mode="bilinear", align_corners=False)[0]
    return torch.round(img * 255) / 255


def _run(tiny_sd_dir: Path, sur: sg.Surrogate | None = None, **changes: int
         ) -> tuple[list[torch.Tensor], list[tuple[str, dict[str, dict[str, torch.Tensor]]]]]:
    """Protected photos and, after every step, the stage and both adapters' weights."""
    seen: list[tuple[str, dict[str, dict[str, torch.Tensor]]]] = []
    base = sur if sur is not None else sg.load_surrogate(tiny_sd_dir)

    def progress(stage: str, step: int, total: int) -> None:
        seen.append((stage, {name: sg.lora_state(base, name) for name in (PRIOR, DYN)}))

    res = protect_album_layer1([_photo(1)], tiny_sd_dir, BASE.with_overrides(**changes),
                               working_size=TINY_SD_RESOLUTION, lora_lr=1e-3, surrogate=base,
                               progress=progress)
    return res.protected, seen


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def start(tiny_sd_dir: Path) -> list[torch.Tensor]:
    """No step of any stage: the random start alone."""
    photos, seen = _run(tiny_sd_dir)
    assert [s for s, _ in seen] == ["prior", "prior"]
    return photos


def test_pgd_stages_move_the_photo_and_no_weights(tiny_sd_dir: Path,
                                                  start: list[torch.Tensor]) -> None:
    for stage_steps in ({"layer1_pgd_steps": 3}, {"layer1_denoise_steps": 3}):
        photos, seen = _run(tiny_sd_dir, **stage_steps)
        assert float((photos[0] - start[0]).abs().max()) > 1.5 / 255, stage_steps
        pgd = [w for s, w in seen if s == "layer1_pgd"]
        assert len(pgd) == 6 and [s for s, _ in seen].count("layer1_lora") == 0
        last_prior = [w for s, w in seen if s == "prior"][-1]
        for weights in pgd:  # neither surrogate changed while the photo did
            assert _same(weights[PRIOR], last_prior[PRIOR])
            assert _same(weights[DYN], last_prior[DYN])


def test_fine_tuning_stage_moves_the_dynamic_surrogate_only(tiny_sd_dir: Path,
                                                           start: list[torch.Tensor]) -> None:
    photos, seen = _run(tiny_sd_dir, layer1_lora_steps=3)
    assert torch.equal(photos[0], start[0]), "fine-tuning must not change the photo"
    stages = [s for s, _ in seen]
    assert stages == ["prior", "prior"] + ["layer1_lora"] * 3  # none after the last epoch
    before = seen[1][1]
    after = seen[-1][1]
    assert _same(after[PRIOR], before[PRIOR]), "the static surrogate must stay as trained"
    assert not _same(after[DYN], before[DYN])


def test_static_surrogate_is_trained_first_and_only_then(tiny_sd_dir: Path) -> None:
    _, seen = _run(tiny_sd_dir, layer1_pgd_steps=1, layer1_denoise_steps=1,
                   layer1_lora_steps=1, layer1_rounds=3)
    stages = [s for s, _ in seen]
    assert stages == ["prior", "prior"] + ["layer1_pgd", "layer1_pgd", "layer1_lora"] * 2 \
        + ["layer1_pgd", "layer1_pgd"]
    assert not _same(seen[0][1][PRIOR], seen[1][1][PRIOR])
    assert all(_same(w[PRIOR], seen[1][1][PRIOR]) for _, w in seen[2:])


def test_budget_is_the_fine_tuning_one(tiny_sd_dir: Path) -> None:
    photos, _ = _run(tiny_sd_dir, layer1_pgd_steps=4, layer1_denoise_steps=4)
    change = float((photos[0] - _photo(1)).abs().max()) * 255
    # eps_ft 10 is the bound; the zero-shot eps (3) must not be what limits layer 1.
    assert 3.5 < change <= 10 + 1e-4, change


def test_dual_objective_stays_available(tiny_sd_dir: Path, start: list[torch.Tensor]) -> None:
    photos, seen = _run_dual(tiny_sd_dir)
    assert float((photos[0] - start[0]).abs().max()) > 0
    # The dual objective refreshes the static surrogate between epochs (every 1 here).
    assert [s for s, _ in seen].count("prior") == 2 + 1


def _run_dual(tiny_sd_dir: Path) -> tuple[list[torch.Tensor],
                                          list[tuple[str, dict[str, dict[str, torch.Tensor]]]]]:
    seen: list[tuple[str, dict[str, dict[str, torch.Tensor]]]] = []
    settings = BASE.with_overrides(layer1_objective="dual", layer1_pgd_steps=2,
                                   layer1_lora_steps=1, prior_refresh_every=1)
    res = protect_album_layer1([_photo(1)], tiny_sd_dir, settings,
                               working_size=TINY_SD_RESOLUTION, lora_lr=1e-3,
                               progress=lambda s, i, n: seen.append((s, {})))
    return res.protected, seen


@pytest.mark.parametrize("objective", ["attention", "denoise", "dual"])
def test_each_stage_term_gives_the_same_gradient_with_split_backward(
        tiny_sd_dir: Path, objective: str) -> None:
    """Every layer-1 term runs through the memory plan's split backward (one UNet graph alive
    at a time): the album's gradients and loss are those of one backward of the whole loss
    (two photos in two passes), with gradient checkpointing too."""
    from dladiff_app.engine.shield.dual_term import attention_term, denoise_term, dual_term
    from dladiff_app.engine.shield.memory import StepDown
    from dladiff_app.engine.shield.precision import pixel_scale_for

    sur = sg.load_surrogate(tiny_sd_dir)
    for k, name in enumerate((PRIOR, DYN)):
        sg.add_lora(sur, name, seed=k)
        with torch.no_grad():  # adapters that differ, so the static and dynamic maps differ
            for p in sg.lora_parameters(sur, name):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7 + k))
                       * 0.05)
    clean = [_photo(1), _photo(2)]
    photos = [(c + 0.03 * torch.randn(c.shape, generator=torch.Generator().manual_seed(i))
               ).clamp(0, 1) for i, c in enumerate(clean)]

    def album_gradient(split: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        album = StepDown(sur, 2, 1, TINY_SD_RESOLUTION, "cpu", split_backward=split)
        noise = torch.Generator().manual_seed(3)
        term = {"attention": lambda: attention_term(sur, album, clean, pixel_scale_for(sur),
                                                    noise),
                "denoise": lambda: denoise_term(sur, album, pixel_scale_for(sur), noise),
                "dual": lambda: dual_term(sur, album, (1.0, 0.5), pixel_scale_for(sur),
                                          noise)}[objective]()
        grads, loss = term.gradients(photos, 0)
        return [g for g in grads if g is not None], loss

    whole, whole_loss = album_gradient(split=False)
    assert len(whole) == 2 and float(whole_loss) > 0
    for g in whole:
        assert g.shape == (3, 64, 80) and float(g.abs().sum()) > 0
    for checkpointing in (False, True):
        # Checkpointing recomputes each UNet pass in the backward with the adapter active
        # then: taken one term at a time, that is the term's own adapter.
        if checkpointing:
            sur.unet.enable_gradient_checkpointing()
        split, split_loss = album_gradient(split=True)
        torch.testing.assert_close(split_loss, whole_loss, atol=1e-6, rtol=1e-5)
        for g_split, g_whole in zip(split, whole, strict=True):
            torch.testing.assert_close(g_split, g_whole, atol=1e-7, rtol=1e-4)
