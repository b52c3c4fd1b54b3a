"""CLIP image encoder on a tiny random CLIPVisionModelWithProjection saved and reloaded locally."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dladiff_app.core.errors import ModelMissingError
from dladiff_app.engine.faces.align import ARCFACE_TEMPLATE_112
from dladiff_app.engine.faces.clip_encoder import ClipImageEncoder, face_crop_matrix
from dladiff_app.engine.faces.types import Face, IdentityEncoder


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4, image_size=224, patch_size=32,
                           projection_dim=16)
    folder = tmp_path_factory.mktemp("clip") / "tiny_clip"
    CLIPVisionModelWithProjection(cfg).save_pretrained(str(folder))
    return folder


def _face() -> Face:
    lm = ARCFACE_TEMPLATE_112 * 1.5 + [100.0, 60.0]
    return Face(box=np.array([100.0, 60.0, 268.0, 228.0]), landmarks5=lm)


def test_tiny_clip_embeds_and_differentiates(tiny_clip_dir: Path) -> None:
    enc = ClipImageEncoder(tiny_clip_dir)
    assert isinstance(enc, IdentityEncoder) and enc.metric == "cosine"
    assert enc.name == "tiny_clip"
    img = torch.rand(1, 3, 320, 400, requires_grad=True)
    emb = enc.embed(img, _face())
    assert emb.shape == (16,) and torch.isfinite(emb).all()
    emb.sum().backward()
    assert img.grad is not None
    assert img.grad[..., 100:200, 150:250].abs().sum() > 0
    assert img.grad[..., 300:, :].abs().sum() == 0  # below the face crop


def test_crop_is_the_224_norm_crop() -> None:
    from insightface.utils import face_align

    lm = (ARCFACE_TEMPLATE_112 * 2.0 + [30.0, 40.0]).astype(np.float32)
    np.testing.assert_allclose(face_crop_matrix(lm, 224),
                               face_align.estimate_norm(lm, image_size=224), atol=1e-3)


def test_missing_folder_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError, match="nothing_here"):
        ClipImageEncoder(tmp_path / "nothing_here")
