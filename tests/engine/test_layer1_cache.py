"""The prior-surrogate cache: what its key depends on, atomic writes, corrupt entries."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dladiff_app.core.errors import OutputError
from dladiff_app.engine.shield.prior_cache import PriorCache, pipeline_identity, prior_cache_key

SETTINGS = {"prior_steps": 10, "seed": 0, "rank": 8}


def test_key_depends_on_images_settings_and_pipeline(tiny_sd_dir: Path, tmp_path: Path) -> None:
    images = [torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(0))]
    key = prior_cache_key(images, tiny_sd_dir, SETTINGS)
    assert key == prior_cache_key([images[0].clone()], tiny_sd_dir, SETTINGS)
    changed = images[0].clone()
    changed[0, 0, 0] += 1 / 255
    assert key != prior_cache_key([changed], tiny_sd_dir, SETTINGS)
    assert key != prior_cache_key(images, tiny_sd_dir, {**SETTINGS, "seed": 1})
    reshaped = [images[0].reshape(3, 30, 20)]  # same bytes, other photo
    assert key != prior_cache_key(reshaped, tiny_sd_dir, SETTINGS)
    other = tmp_path / "other_pipe"
    other.mkdir()
    (other / "model_index.json").write_text("{}")
    assert pipeline_identity(other) != pipeline_identity(tiny_sd_dir)
    # Single-file checkpoints (a supported way to give SD) must not all share one identity.
    one, two = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    one.write_bytes(b"x" * 10)
    two.write_bytes(b"y" * 11)
    assert len({pipeline_identity(one), pipeline_identity(two), pipeline_identity(other)}) == 3
    assert prior_cache_key(images, one, SETTINGS) != prior_cache_key(images, two, SETTINGS)


def test_save_load_and_counters(tmp_path: Path) -> None:
    cache = PriorCache(tmp_path / "cache")
    assert cache.load("k" * 64) is None and cache.misses == 1
    state = {"a.lora_A.{adapter}.weight": torch.randn(8, 4)}
    path = cache.save("k" * 64, state)
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    loaded = cache.load("k" * 64)
    assert loaded is not None and torch.equal(loaded["a.lora_A.{adapter}.weight"],
                                              state["a.lora_A.{adapter}.weight"])
    assert cache.hits == 1


def test_unwritable_cache_is_a_typed_error_and_leaves_no_temp_file(tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder would go")
    with pytest.raises(OutputError, match="prior-"):
        PriorCache(blocker / "prior_lora").save("k" * 64, {"w": torch.zeros(2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_corrupt_entry_is_a_miss(tmp_path: Path) -> None:
    cache = PriorCache(tmp_path)
    cache.path_for("x" * 64).write_bytes(b"not a safetensors file")
    assert cache.load("x" * 64) is None
    assert cache.misses == 1
