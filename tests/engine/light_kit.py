"""A fast EngineKit for batch-logic tests: real runner, real files, trivial "shields".

The detector finds a face only where a photo carries a marker (a pure red top-left pixel), so
tests decide which photos have a face. The zero-shot "shield" adds a fixed +-eps pattern (a real
change to the file), and the scorer measures the mean absolute pixel change (a real number from
the two images, reported as one "encoder"). None of this stands in for the real models' quality:
it exercises the orchestration (journal, statuses, files, reports) in milliseconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.results import IdentityScore
from dladiff_app.engine.faces.types import Face
from dladiff_app.engine.runner import EngineKit, Layer2Output, StepFn


class MarkerDetector:
    name = "marker"

    def detect(self, image: np.ndarray) -> list[Face]:
        if image[0, 0, 0] > 0.95 and image[0, 0, 1] < 0.05 and image[0, 0, 2] < 0.05:
            h, w = image.shape[:2]
            box = np.array([w * 0.25, h * 0.25, w * 0.75, h * 0.75], dtype=np.float32)
            return [Face(box=box, landmarks5=np.zeros((5, 2), np.float32))]
        return []


def light_kit(eps: float = 4.0, steps: int = 3, seen: list[Any] | None = None) -> EngineKit:
    """``seen`` (optional) collects a callback's view of each layer-2 call (for memory tests)."""

    def layer2(clean: torch.Tensor, start: torch.Tensor, faces: list[Face],
               cancel: CancelToken, step: StepFn) -> Layer2Output:
        for i in range(steps):
            cancel.check()
            step("layer2", i + 1, steps)
        if seen is not None:
            seen.append(None)
        h, w = clean.shape[-2:]
        signs = torch.from_numpy(np.indices((h, w)).sum(0) % 2 * 2.0 - 1.0).float()
        protected = (start + signs * (eps / 255.0)).clamp(0, 1)
        return Layer2Output(protected, steps, note=f"{steps} test steps")

    def score(clean: np.ndarray, other: np.ndarray) -> list[IdentityScore]:
        diff = float(np.abs(clean.astype(np.float32) - other.astype(np.float32)).mean() * 255)
        return [IdentityScore("pixel_change", "euclidean", diff, 0.5, diff < 0.5)]

    return EngineKit(device_kind="cpu", device_name="CPU (test)", detector=MarkerDetector(),
                     score=score, layer2=layer2,
                     layer1_missing="The fine-tuning shield is not part of this test kit.",
                     model_revisions={"encoders": ["pixel_change"]},
                     models={"sd_pipeline": None, "detector": "marker",
                             "encoders": [{"name": "pixel_change"}]})


def make_photos(folder: Path, names: list[str], *, faces: bool = True,
                size: tuple[int, int] = (72, 96), seed: int = 0) -> list[Path]:
    """Small random PNG photos; with ``faces`` they carry the marker the detector finds."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        pixels = rng.integers(30, 220, (*size, 3), dtype=np.uint8)
        if faces:
            pixels[0, 0] = (255, 0, 0)
        path = folder / name
        Image.fromarray(pixels).save(path)
        out.append(path)
    return out
