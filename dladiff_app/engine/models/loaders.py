"""Load models from the store, in safe formats only.

Weights are read from safetensors only; a pickled checkpoint is refused. Every loader works
from local files (``local_files_only``): the network is the store's business, never the
loader's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dladiff_app.core.errors import DladiffError, ModelIntegrityError, ModelMissingError

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline


def _quiet_loading_bars() -> None:
    """diffusers/transformers draw a progress bar per loaded component on stderr; the app shows
    its own progress, so theirs would only garble the CLI's output."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _dtype_keyword() -> str:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (the old name warns); older releases only
    know ``torch_dtype``. The new loader resolves both through ``_resolve_dtype``."""
    from diffusers.pipelines import pipeline_utils

    return "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"


def folder_variant(path: Path, dtype: torch.dtype) -> str | None:
    """The weight variant to load from the diffusers folder ``path``: ``"fp16"`` when its
    UNet only has fp16 files (a download for a CUDA machine), or has both and ``dtype`` is
    half precision; None (the plain files) otherwise. Whatever the variant, the weights are
    cast to the dtype asked for, so an fp16-only folder also runs in fp32 on a CPU or MPS."""
    unet = Path(path) / "unet"
    has_fp16 = any(unet.glob("*.fp16.safetensors"))
    has_plain = any(p for p in unet.glob("*.safetensors") if ".fp16." not in p.name)
    if has_fp16 and (not has_plain or dtype in (torch.float16, torch.bfloat16)):
        return "fp16"
    return None


def load_sd_pipeline(path: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                     config_dir: Path | None = None,
                     variant: str | None = None) -> StableDiffusionPipeline:
    """Load a Stable Diffusion 1.x/2.x pipeline with the safety checker off.

    ``path``: a diffusers folder (``model_index.json``) or a single ``.safetensors`` checkpoint.
    For a single file, ``config_dir`` (a diffusers folder of the same family, e.g. the store's
    ``sd15``) supplies configs and tokenizer so nothing is fetched; without it diffusers needs
    the hub, which raises :class:`ModelMissingError` when offline. ``variant``: the weight files
    of a folder to read (default: :func:`folder_variant` decides, so every downloaded variant
    loads). Modules end on ``device`` in ``dtype``.
    """
    from diffusers import StableDiffusionPipeline

    _quiet_loading_bars()
    path = Path(path)
    common: dict[str, Any] = {_dtype_keyword(): dtype, "safety_checker": None,
                              "requires_safety_checker": False}
    try:
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise ModelIntegrityError(f"{path} is not a diffusers folder (no model_index.json).")
            variant = variant or folder_variant(path, dtype)
            pipe = StableDiffusionPipeline.from_pretrained(
                path, local_files_only=True, use_safetensors=True, variant=variant, **common
            )
        elif path.suffix.lower() == ".safetensors":
            pipe = _from_single_file(path, config_dir, common)
        elif path.exists():
            raise ModelIntegrityError(
                f"{path.name}: only .safetensors checkpoints or diffusers folders are loaded "
                "(.ckpt/.bin/.pt files can run code when opened)."
            )
        else:
            raise ModelMissingError(f"Stable Diffusion model not found at {path}.")
    except (DladiffError, MemoryError):
        raise
    except Exception as exc:  # diffusers raises KeyError, TypeError, ... for a broken folder
        raise ModelIntegrityError(f"Could not load Stable Diffusion from {path}: "
                                  f"{type(exc).__name__}: {exc}") from exc
    return pipe.to(device)


def check_pipeline_folder(path: Path) -> None:
    """Cheap checks of a diffusers folder before a job starts (loading it takes long): its
    ``model_index.json`` names a pipeline class and each component folder it lists exists.
    Raises :class:`ModelIntegrityError` naming what is wrong; a single-file checkpoint or a
    missing path is left to :func:`load_sd_pipeline`."""
    import json

    path = Path(path)
    if not path.is_dir():
        return
    index = path / "model_index.json"
    try:
        doc = json.loads(index.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelIntegrityError(f"{path} is not a diffusers folder (no model_index.json): "
                                  "point --pipeline at a Stable Diffusion folder saved by "
                                  "diffusers.") from None
    except (OSError, ValueError) as exc:
        raise ModelIntegrityError(f"{index} cannot be read ({exc}): the Stable Diffusion "
                                  "folder is damaged.") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("_class_name"), str):
        raise ModelIntegrityError(f"{index} does not name a pipeline (no _class_name): the "
                                  "Stable Diffusion folder is damaged.")
    missing = [name for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
               if name in doc and not (path / name).is_dir()]
    if missing:
        raise ModelIntegrityError(f"The Stable Diffusion folder {path} lacks its "
                                  f"{', '.join(missing)} folder(s): it is incomplete.")


def _from_single_file(path: Path, config_dir: Path | None,
                      common: dict[str, Any]) -> StableDiffusionPipeline:
    """A single-file checkpoint needs the diffusers configuration of its components; without
    one, diffusers looks it up on the Hugging Face hub (a network call in the middle of a
    protection). So a configuration folder is always given, from ``config_dir``, from a diffusers
    folder next to the checkpoint, or from the downloaded ``sd15``; with none of them this is a
    ModelMissingError that says what to do, never a network lookup."""
    from diffusers import StableDiffusionPipeline

    config_dir = config_dir or _local_config_for(path)
    if config_dir is None:
        raise ModelMissingError(
            f"{path.name} is a single-file checkpoint; it needs the model configuration of a "
            "Stable Diffusion 1.x folder, and none is on this computer (it is never fetched "
            "from the internet during a protection). Download it once with "
            "`dladiff models download sd15`, or point to a diffusers folder instead with "
            "`dladiff models path sd15 PATH`."
        )
    return StableDiffusionPipeline.from_single_file(
        str(path), config=str(config_dir), local_files_only=True, **common
    )


def _local_config_for(checkpoint: Path) -> Path | None:
    """A diffusers folder holding the configuration for ``checkpoint``: the folder it lies in,
    a folder named like it beside it, or the downloaded ``sd15`` of the model store."""
    candidates = [checkpoint.parent, checkpoint.with_suffix("")]
    try:
        from dladiff_app.core.paths import models_dir
        from dladiff_app.core.settings import load_settings

        candidates.append(models_dir(load_settings()) / "sd15")
    except Exception:  # noqa: BLE001 - unreadable settings: only the nearby folders count
        pass
    for folder in candidates:
        if (folder / "model_index.json").is_file():
            return folder
    return None
