"""The tiny Stable Diffusion fixture: reloads offline, has the promised shapes, is deterministic."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.tiny_sd import TINY_SD_RESOLUTION, build_tiny_sd


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_tiny_sd_reloads_offline_and_runs(tiny_sd_dir: Path) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, local_files_only=True)
    assert pipe.safety_checker is None
    assert _folder_bytes(tiny_sd_dir) < 20 * 1024**2
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == TINY_SD_RESOLUTION

    ids = pipe.tokenizer("a photo of sks person").input_ids
    # Whole-word tokens: bos, a, photo, of, sks, person, eos; none is the unknown token.
    assert len(ids) == 7
    assert pipe.tokenizer.unk_token_id not in ids[1:-1]

    x = torch.rand(1, 3, TINY_SD_RESOLUTION, TINY_SD_RESOLUTION) * 2 - 1
    with torch.no_grad():
        z = pipe.vae.encode(x).latent_dist.mean
        emb = pipe.text_encoder(torch.tensor([ids]))[0]
        eps = pipe.unet(z, 10, emb).sample
    assert z.shape == (1, 4, TINY_SD_RESOLUTION // 8, TINY_SD_RESOLUTION // 8)
    assert emb.shape == (1, 7, 32)
    assert eps.shape == z.shape
    assert torch.isfinite(eps).all()


def test_tiny_sd_is_deterministic(tiny_sd_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    again = build_tiny_sd(tmp_path / "again")
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors"):
        a, b = load_file(tiny_sd_dir / part), load_file(again / part)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].equal(b[k]), f"{part}:{k} differs between two builds with the same seed"


@pytest.mark.parametrize("seed", [1])
def test_tiny_sd_seed_changes_weights(tiny_sd_dir: Path, tmp_path: Path, seed: int) -> None:
    from safetensors.torch import load_file

    other = build_tiny_sd(tmp_path / "other", seed=seed)
    a = load_file(tiny_sd_dir / "unet/diffusion_pytorch_model.safetensors")
    b = load_file(other / "unet/diffusion_pytorch_model.safetensors")
    assert any(not a[k].equal(b[k]) for k in a)
