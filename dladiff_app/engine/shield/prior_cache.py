"""On-disk cache of the prior surrogate's LoRA (S_prior, pre-fine-tuned on the clean photos).

Pre-fine-tuning S_prior is the most expensive fixed cost of layer 1 and depends only on the
clean album, the settings that shape its training and the base model, so a second protection of
the same album (another strength, a re-run after a cancel) reuses it. The key is a SHA-256 of:
the clean images' float32 bytes and shapes, the settings that matter, and the pipeline's
identity (model_index.json, unet/config.json, and the size and mtime of every weight file).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from dladiff_app.core.atomic import atomic_write_bytes

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


def pipeline_identity(pipeline_dir: Path) -> str:
    """Hex digest naming a pipeline's exact weights without reading gigabytes. A diffusers
    folder: its model_index.json, unet/ and vae/config.json bytes plus every weight file's
    relative path, size and mtime. A single checkpoint file: its name, size and mtime."""
    root = Path(pipeline_dir)
    h = hashlib.sha256()
    if root.is_file():  # one .safetensors checkpoint: the folder walk below would see nothing
        st = root.stat()
        h.update(f"single-file:{root.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()
    for rel in ("model_index.json", "unet/config.json", "vae/config.json"):
        f = root / rel
        h.update(rel.encode())
        h.update(f.read_bytes() if f.is_file() else b"<missing>")
    for f in sorted(p for p in root.rglob("*") if p.suffix in _WEIGHT_SUFFIXES and p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(root).as_posix()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def prior_cache_key(images: list[torch.Tensor], pipeline_dir: Path,
                    settings: dict[str, object]) -> str:
    """SHA-256 key of the prior LoRA: the clean images (each (3, H, W) float in [0, 1]; shape
    and float32 bytes), ``settings`` (JSON-able: steps, seed, rank, lr, working size, ...) and
    :func:`pipeline_identity`."""
    h = hashlib.sha256(b"dladiff-prior-v1")
    for img in images:
        arr = img.detach().to("cpu", torch.float32).contiguous()
        h.update(repr(tuple(arr.shape)).encode())
        h.update(arr.numpy().tobytes())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(pipeline_identity(pipeline_dir).encode())
    return h.hexdigest()


class PriorCache:
    """A folder of ``<key>.safetensors`` LoRA weights. ``hits``/``misses`` count lookups."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0

    def path_for(self, key: str) -> Path:
        return self.folder / f"prior-{key[:32]}.safetensors"

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        """The cached weights, or None (a missing or unreadable entry is a miss: the prior is
        then simply trained again)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.path_for(key)
        if path.is_file():
            try:
                state = load_file(path)
            except (SafetensorError, OSError, ValueError):
                state = None
            if state:
                self.hits += 1
                return state
        self.misses += 1
        return None

    def save(self, key: str, state: dict[str, torch.Tensor]) -> Path:
        """Write with :func:`core.atomic.atomic_write_bytes` (temp file, fsync, rename; the temp
        is removed on failure) so a crash never leaves a half entry. Raises ``OutputError``."""
        from safetensors.torch import save

        path = self.path_for(key)
        data = save({k: v.detach().cpu().contiguous() for k, v in state.items()},
                    metadata={"key": key, "kind": "dladiff-prior-lora"})
        atomic_write_bytes(path, data)
        return path
