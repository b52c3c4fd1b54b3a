"""CLIP image encoders (IP-Adapter's ViT-H/14, PhotoMaker's ViT-L/14) as identity encoders.

The zero-shot tools feed CLIP a face crop: IP-Adapter-FaceID-Plus and similar pipelines use
insightface's ``norm_crop(img, kps, image_size=224)``, i.e. the ArcFace template scaled to
224 px. We take the same crop with the differentiable warp, apply CLIP's mean/std and return
``image_embeds`` (the projected embedding the adapters consume).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from dladiff_app.core.errors import ModelIntegrityError, ModelMissingError
from dladiff_app.engine.faces.align import ARCFACE_TEMPLATE_112, estimate_similarity, warp_affine
from dladiff_app.engine.faces.types import Face

# OpenAI CLIP's normalisation constants (also in every CLIP preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Provisional cosine threshold: CLIP embeddings are not trained for identity and no published
# same-person operating point exists. Measure it with the benchmark harness before trusting
# CLIP verdicts; the value (cosine) is what the shield minimises.
CLIP_THRESHOLD = 0.8


def face_crop_matrix(landmarks5: np.ndarray, size: int) -> np.ndarray:
    """(2, 3) photo -> crop transform: the ArcFace template scaled to ``size`` (224 gives
    insightface's ``norm_crop(..., image_size=224)``)."""
    return estimate_similarity(np.asarray(landmarks5, dtype=np.float64),
                               ARCFACE_TEMPLATE_112 * (size / 112.0))


def _read_norm(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = folder / "preprocessor_config.json"
    if cfg.is_file():
        try:
            data = json.loads(cfg.read_text(encoding="utf-8"))
            return tuple(data["image_mean"]), tuple(data["image_std"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelIntegrityError(f"{cfg.name} in {folder}: unreadable ({exc}).") from exc
    return CLIP_MEAN, CLIP_STD


class ClipImageEncoder(nn.Module):
    """``IdentityEncoder`` over a local ``CLIPVisionModelWithProjection`` folder (cosine).

    ``embed(image, face)``: ``image`` (1, 3, H, W) float32 RGB in [0, 1], full resolution, may
    require grad; ``face.landmarks5`` insightface order. Returns ``image_embeds[0]``, shape
    (projection_dim,), differentiable w.r.t. ``image``.
    """

    metric = "cosine"
    runs_in_half = True  # embed() casts the pixels to the weights' dtype and back
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, folder: Path | str, name: str | None = None,
                 threshold: float = CLIP_THRESHOLD) -> None:
        super().__init__()
        from transformers import CLIPVisionModelWithProjection

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ModelMissingError(f"{folder.name}: no CLIP image encoder (config.json) in {folder}.")
        try:
            model = CLIPVisionModelWithProjection.from_pretrained(str(folder))
        except (OSError, ValueError) as exc:
            raise ModelIntegrityError(f"{folder.name}: could not load the CLIP encoder ({exc}).") from exc
        self.model = model.eval().requires_grad_(False)
        self.name = name or folder.name
        self.threshold = float(threshold)
        self.image_size = int(cast(int, model.config.image_size))
        mean, std = _read_norm(folder)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def crop(self, image: torch.Tensor, face: Face) -> torch.Tensor:
        """(1, 3, s, s) RGB [0, 1] face crop at the model's ``image_size``."""
        matrix = face_crop_matrix(np.asarray(face.landmarks5), self.image_size)
        return warp_affine(image, matrix, self.image_size)

    def embed(self, image: torch.Tensor, face: Face, flip: bool = False) -> torch.Tensor:
        mean = self.mean.to(image.dtype)
        std = self.std.to(image.dtype)
        crop = self.crop(image, face)
        pixels = ((crop.flip(-1) if flip else crop) - mean) / std
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values=pixels.to(dtype))
        return out.image_embeds[0].to(image.dtype)
