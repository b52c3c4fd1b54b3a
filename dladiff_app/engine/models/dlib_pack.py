"""The offline model pack: dlib's face models shipped by the ``face_recognition_models`` package.

The package is located by path and never imported: its ``__init__`` imports ``pkg_resources``,
which current setuptools no longer provides, so ``import face_recognition_models`` fails even
though the weight files are installed and usable. The files are dlib's own serialisation
(``.dat``), read by dlib-bin; nothing here unpickles anything.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from dladiff_app.core.errors import ModelMissingError

PACKAGE_NAME = "face_recognition_models"

# File names inside ``face_recognition_models/models`` (version 0.3.0, CC0).
RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"
SHAPE5_FILE = "shape_predictor_5_face_landmarks.dat"
SHAPE68_FILE = "shape_predictor_68_face_landmarks.dat"
MMOD_FILE = "mmod_human_face_detector.dat"
PACK_FILES = (RECOGNITION_FILE, SHAPE5_FILE, SHAPE68_FILE, MMOD_FILE)

_INSTALL_HINT = "pip install face_recognition_models"


@dataclass(frozen=True)
class DlibPack:
    """Paths of dlib's offline face models.

    - ``recognition``: the 128-d face-recognition ResNet (150x150 RGB chip, 0-255 floats).
    - ``shape5``: 5-point landmark predictor (eye corners + nose base), used for chip alignment.
    - ``shape68``: 68-point landmark predictor.
    - ``mmod``: the MMOD CNN face detector.
    """

    recognition: Path
    shape5: Path
    shape68: Path
    mmod: Path

    @property
    def folder(self) -> Path:
        return self.recognition.parent

    def files(self) -> list[Path]:
        return [self.recognition, self.shape5, self.shape68, self.mmod]


def package_models_dir() -> Path | None:
    """The ``models`` folder of the installed package, or None when the package is absent."""
    try:
        spec = importlib.util.find_spec(PACKAGE_NAME)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "models"
        if candidate.is_dir():
            return candidate
    return None


def find_dlib_pack() -> DlibPack:
    """Locate the dlib pack; raise :class:`ModelMissingError` saying how to install it."""
    folder = package_models_dir()
    if folder is None:
        raise ModelMissingError(
            "The offline face models (dlib, ~132 MB, CC0) are not installed: "
            f"run `{_INSTALL_HINT}`."
        )
    missing = [name for name in PACK_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelMissingError(
            f"The offline face models in {folder} are incomplete (missing: {', '.join(missing)}): "
            f"reinstall with `{_INSTALL_HINT} --force-reinstall`."
        )
    return DlibPack(
        recognition=folder / RECOGNITION_FILE,
        shape5=folder / SHAPE5_FILE,
        shape68=folder / SHAPE68_FILE,
        mmod=folder / MMOD_FILE,
    )
