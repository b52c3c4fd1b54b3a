"""Where DLADiff keeps its settings and its models, and the ML environment that follows from it.

Precedence for the cache folder: the ``DLADIFF_CACHE_DIR`` environment variable, then the
``cache_dir`` setting, then ``platformdirs.user_cache_dir("dladiff")``. Models live in
``<cache>/models``. The settings file lives in ``DLADIFF_CONFIG_DIR`` or
``platformdirs.user_config_dir("dladiff")``.

:func:`configure_ml_environment` must run before huggingface_hub, diffusers or transformers are
imported: those libraries read ``HF_HOME``/``HF_HUB_CACHE`` once, at import time.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Protocol

import platformdirs

APP_NAME = "dladiff"
ENV_CACHE_DIR = "DLADIFF_CACHE_DIR"
ENV_CONFIG_DIR = "DLADIFF_CONFIG_DIR"
SETTINGS_FILE = "settings.json"

_log = logging.getLogger(__name__)


class CacheSetting(Protocol):
    """The one setting the folders depend on (``core.settings.Settings`` has it); the settings
    module imports this one for the settings file's place, so the settings come in as an
    argument, never read from here."""

    @property
    def cache_dir(self) -> str | None: ...

# Libraries that freeze their cache locations when first imported.
_ML_MODULES = ("huggingface_hub", "diffusers", "transformers", "insightface")


def config_dir() -> Path:
    """Folder of ``settings.json`` (not created here)."""
    override = os.environ.get(ENV_CONFIG_DIR)
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def settings_path() -> Path:
    return config_dir() / SETTINGS_FILE


def cache_dir(settings: CacheSetting) -> Path:
    """The cache root for ``settings`` (the loaded settings: this never reads the file)."""
    override = os.environ.get(ENV_CACHE_DIR)
    if override:
        return Path(override).expanduser()
    if settings.cache_dir:
        return Path(settings.cache_dir).expanduser()
    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def models_dir(settings: CacheSetting) -> Path:
    return cache_dir(settings) / "models"


def ml_environment(models_root: Path) -> dict[str, str]:
    """The environment variables that point the ML libraries into ``models_root``."""
    hf_home = models_root / "huggingface"
    return {
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        # insightface takes its root as an argument; the variable documents the location for
        # tools and for our own loaders, which pass it explicitly.
        "INSIGHTFACE_HOME": str(models_root / "insightface"),
        "TORCH_HOME": str(models_root / "torch"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "DISABLE_TELEMETRY": "1",
    }


def configure_ml_environment(models_root: Path) -> dict[str, str]:
    """Set the ML libraries' cache variables to live under ``models_root`` (the app's
    :func:`models_dir`) and return what was set. ``HF_HUB_OFFLINE`` is left as the user set it.

    Call it before importing any ML library; if one is already imported its cached paths are not
    updated, which is logged (our own downloads pass their folders explicitly, so they still land
    in the right place).
    """
    values = ml_environment(models_root)
    os.environ.update(values)
    # The libraries' own chatter (torchvision hints, per-file loading bars) is not for our users;
    # a user who wants it back sets these variables themselves.
    for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(name, "error")
    early = [name for name in _ML_MODULES if name in sys.modules]
    if early:
        _log.info("ML libraries imported before the model folders were set: %s", ", ".join(early))
    return values
