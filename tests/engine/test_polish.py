"""Joint polish (engine.shield.polish) on a real face: layer 1 on the tiny random Stable
Diffusion, layer 2 and the judge with the real offline dlib detector and ResNet.

One layer-1 + layer-2 run is shared; the polish is judged on the 8-bit file it would be saved as.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import Cancelled
from dladiff_app.core.imageio import load_image
from dladiff_app.core.presets import Layers, ProtectionSettings
from dladiff_app.engine.shield import surrogate as sg
from dladiff_app.engine.shield.dual import dual_loss
from dladiff_app.engine.shield.layer1 import Layer1Surrogates, protect_album_layer1
from dladiff_app.engine.shield.layer2 import clean_embeddings, layer2_loss, protect_faces
from dladiff_app.engine.shield.polish import polish_photo
from dladiff_app.engine.shield.resize import to_working
from tests.engine.real_photos import astronaut, to_tensor
from tests.fixtures.tiny_sd import TINY_SD_RESOLUTION

EPS = 8.0
EPS_FT = 5.0
SETTINGS = ProtectionSettings(preset="custom", eps=EPS, eps_ft=EPS_FT, layers=Layers.BOTH,
                              layer1_rounds=1, layer1_pgd_steps=2, layer1_denoise_steps=1,
                              layer1_lora_steps=1, prior_steps=2,
                              layer2_steps=6, polish_steps=6, seed=0, face_jnd=6.0)
# (A visibility target these mechanics do not reach: the look the polish keeps is
# test_layer2_visibility.py's cap_faces test.)
# Fixed draws for the dual loss, so "before" and "after" are compared on equal terms.
EVAL = {"seeds": (100, 101, 102), "timesteps": (100, 300, 500, 700, 900)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def _fixed_dual_loss(surrogates: Layer1Surrogates, x: torch.Tensor, seeds: tuple[int, ...],
                     timesteps: tuple[int, ...]) -> float:
    """Layer 1's dual loss of ``x`` ((3, H, W) or (1, 3, H, W) in [0, 1]) averaged over fixed
    (seed, timestep) draws, without gradient: two versions of a photo compare on equal terms."""
    sur, size = surrogates.sur, surrogates.working_size
    values = []
    with torch.no_grad():
        work = to_working(x.detach().to(sur.device), size)
        for seed in seeds:
            for t in timesteps:
                draw = sg.NoiseDraw.draw(sur, 1, size, torch.Generator().manual_seed(seed),
                                         torch.full((1,), t))
                values.append(dual_loss(sur, work, draw, surrogates.weights))
    return float(torch.stack(values).mean())

@dataclass
class Stage:
    clean: torch.Tensor          # (1, 3, H, W) on the 8-bit grid
    before: torch.Tensor         # layer 1 + layer 2, quantised as the runner would save it
    faces: list[Any]
    encoders: list[Any]
    surrogates: Layer1Surrogates


@pytest.fixture(scope="module")
def stage(tiny_sd_dir: Path) -> Stage:
    from dladiff_app.engine.faces.dlib_detect import DlibDetector
    from dladiff_app.engine.faces.dlib_resnet import DlibEncoder

    photo = np.ascontiguousarray(astronaut()[:224, 112:336])  # the face, 224x224
    faces = DlibDetector().detect(photo)
    assert len(faces) == 1
    encoders = [DlibEncoder.load()]
    clean = to_tensor(photo)
    l1 = protect_album_layer1([clean[0]], tiny_sd_dir, SETTINGS,
                              working_size=TINY_SD_RESOLUTION, keep_surrogates=True)
    assert l1.surrogates is not None and l1.stats.pgd_seconds > 0
    l2 = protect_faces(clean, l1.protected[0][None], faces, encoders, SETTINGS)
    before = torch.round(l2.protected * 255) / 255
    return Stage(clean, before, faces, encoders, l1.surrogates)


def _saved(tmp_path: Path, x: torch.Tensor) -> torch.Tensor:
    """Write ``x`` as the runner does (8-bit PNG) and read the file back."""
    path = tmp_path / "polished.png"
    Image.fromarray(np.rint(x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(path)
    return to_tensor(load_image(path).pixels)


def test_polish_keeps_budget_changes_photo_and_does_not_undo_either_layer(
        stage: Stage, tmp_path: Path) -> None:
    progress: list[tuple[int, int]] = []
    res = polish_photo(stage.clean, stage.before, stage.faces, stage.encoders, stage.surrogates,
                       SETTINGS, progress=lambda i, n: progress.append((i, n)))
    assert res.steps_done == SETTINGS.polish_steps
    assert progress == [(i, SETTINGS.polish_steps) for i in range(1, SETTINGS.polish_steps + 1)]
    saved = _saved(tmp_path, res.protected)
    assert torch.equal(saved, res.protected)  # already on the 8-bit grid
    # Per pixel: inside layer 1's budget, or no further from the clean photo than the two
    # layers had taken it (layer 2's budget is on top of layer 1's on the face).
    moved, had = (saved - stage.clean).abs() * 255, (stage.before - stage.clean).abs() * 255
    assert bool((moved <= torch.clamp(had, min=EPS_FT) + 1e-3).all())
    assert float(moved.max()) <= EPS + EPS_FT + 1e-3
    assert float(had.max()) > EPS_FT + 1, "layer 2 should have used its own budget on the face"
    changed = float((saved != stage.before).float().mean())
    assert changed > 0.05, f"the polish changed only {changed:.1%} of the values"

    targets = clean_embeddings(stage.clean, stage.faces, stage.encoders)
    with torch.no_grad():
        id_before = float(layer2_loss(stage.before, stage.faces, stage.encoders, targets))
        id_after = float(layer2_loss(saved, stage.faces, stage.encoders, targets))
    dual_before = _fixed_dual_loss(stage.surrogates, stage.before, **EVAL)
    dual_after = _fixed_dual_loss(stage.surrogates, saved, **EVAL)
    print(f"identity cosine {id_before:.4f} -> {id_after:.4f}; "
          f"dual loss {dual_before:.5f} -> {dual_after:.5f}; changed {changed:.1%}")
    # Lower cosine = better protection; the polish may trade a little, not undo layer 2.
    assert id_after <= id_before + 0.02
    assert dual_after >= dual_before - 0.002 * abs(dual_before)


def test_polish_checks_cancel_every_step(stage: Stage) -> None:
    cancel = CancelToken()
    steps: list[int] = []

    def progress(i: int, n: int) -> None:
        steps.append(i)
        cancel.cancel()

    with pytest.raises(Cancelled):
        polish_photo(stage.clean, stage.before, stage.faces, stage.encoders, stage.surrogates,
                     SETTINGS, cancel=cancel, progress=progress)
    assert steps == [1]

