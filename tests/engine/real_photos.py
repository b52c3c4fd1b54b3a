"""Real face photos that ship inside installed packages (nothing is downloaded).

- ``t1()``: insightface's ``data/images/t1.jpg``, a group photo of 6 people (1280x886).
- ``tom_hanks()``: insightface's ``data/images/Tom_Hanks_54745.png``, one aligned face (112x112).
- ``astronaut()``: ``skimage.data.astronaut()``, one face (512x512).
- ``coffee()``: ``skimage.data.coffee()``, a photo without a face (600x400).

Each returns a read-only (H, W, 3) float32 RGB array in [0, 1] (the engine's numpy image
contract). insightface and scikit-image are declared dependencies, so a missing photo fails the
calling test (a skip would hide a broken install). ``as_uint8``
gives the 8-bit view that dlib reads; ``to_tensor`` the (1, 3, H, W) torch layout.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def insightface_images_dir() -> Path | None:
    """``insightface/data/images`` of the installed package (found without importing it)."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "data" / "images"
    return folder if folder.is_dir() else None


def _freeze(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array, dtype=np.float32)
    array.setflags(write=False)
    return array


@functools.cache
def _insightface_photo(name: str) -> np.ndarray | None:
    folder = insightface_images_dir()
    if folder is None or not (folder / name).is_file():
        return None
    with Image.open(folder / name) as im:
        return _freeze(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)


def _insightface_or_fail(name: str) -> np.ndarray:
    photo = _insightface_photo(name)
    if photo is None:
        pytest.fail(f"insightface's sample photo {name} is not installed (pip install insightface)")
    return photo


def t1_path() -> Path:
    """The file of :func:`t1` (for tests that hand a path to the CLI or a loader)."""
    folder = insightface_images_dir()
    if folder is None or not (folder / "t1.jpg").is_file():
        pytest.fail("insightface's sample photo t1.jpg is not installed (pip install insightface)")
    return folder / "t1.jpg"


def t1() -> np.ndarray:
    """Group photo, 6 frontal faces, 1280x886."""
    return _insightface_or_fail("t1.jpg")


def tom_hanks() -> np.ndarray:
    """One tightly cropped face, 112x112."""
    return _insightface_or_fail("Tom_Hanks_54745.png")


@functools.cache
def _skimage_photo(name: str) -> np.ndarray | None:
    try:
        import skimage.data
    except ImportError:
        return None
    return _freeze(getattr(skimage.data, name)().astype(np.float32) / 255.0)


def _skimage_or_fail(name: str) -> np.ndarray:
    photo = _skimage_photo(name)
    if photo is None:
        pytest.fail(f"skimage.data.{name}() is not available (pip install scikit-image)")
    return photo


def astronaut() -> np.ndarray:
    """Eileen Collins, one face, 512x512."""
    return _skimage_or_fail("astronaut")


def coffee() -> np.ndarray:
    """A cup of coffee: no face, 600x400."""
    return _skimage_or_fail("coffee")


def as_uint8(image: np.ndarray) -> np.ndarray:
    """The 8-bit copy of a [0, 1] photo (rounded), as dlib and image files hold it."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def to_tensor(image: np.ndarray):  # -> torch.Tensor (torch imported lazily)
    """(H, W, 3) [0, 1] -> (1, 3, H, W) float32 torch tensor (a writable copy)."""
    import torch

    return torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None].contiguous()


def resized(image: np.ndarray, factor: float) -> np.ndarray:
    """The photo resized by ``factor`` with Pillow (bicubic, via 8 bits)."""
    im = Image.fromarray(as_uint8(image))
    size = (max(1, round(im.width * factor)), max(1, round(im.height * factor)))
    return np.asarray(im.resize(size, Image.Resampling.BICUBIC), dtype=np.float32) / 255.0


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """The photo after a Pillow JPEG round trip at ``quality``."""
    import io

    buf = io.BytesIO()
    Image.fromarray(as_uint8(image)).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
