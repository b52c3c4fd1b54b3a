"""Reading photos safely into sRGB float arrays, and writing protected photos without surprises.

Loading (:func:`load_image`) never modifies the source file, refuses anything it cannot decode
completely with a typed :class:`~dladiff_app.core.errors.ImageError`, checks the announced size
before decoding (decompression bombs), and normalises every supported file to one contract:
``(H, W, 3) float32 RGB in [0, 1]``, sRGB, EXIF orientation applied, alpha composited on white.

Saving (:func:`save_image`) quantises to 8 bits (:func:`to_uint8`), encodes, and publishes with
:func:`~dladiff_app.core.atomic.create_exclusive`: never overwrites, never leaves partial files.

Colour decision for outputs: no ICC profile is embedded. Pixels are always converted to sRGB on
load, and an untagged image is read as sRGB by browsers, social networks and colour-managed
viewers alike, so a tag would add bytes without changing what anyone sees.

Metadata decision: outputs carry no metadata unless the caller passes ``exif`` (the user asked to
keep it); even then only descriptive tags survive (see :func:`clean_exif`): never GPS, maker
notes, serial numbers, thumbnails or orientation (the pixels are already upright).

Known limit: Pillow has no 16-bit-per-channel colour mode, so 16-bit colour PNG/TIFF files are
reduced to 8 bits by Pillow itself; 16-bit greyscale keeps its precision until the float
conversion.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageCms, ImageFile

from dladiff_app.core.atomic import create_exclusive
from dladiff_app.core.errors import (
    ImageError,
    ImageMissingError,
    ImageTooLargeError,
    ImageTooSmallError,
    ImageUnreadableError,
    NotAnImageError,
    UnsupportedFormatError,
)
from dladiff_app.core.hashing import sha256_stream

# MPO: the JPEG variant phones and many cameras write (Ultra HDR gain maps, depth maps, stereo
# pairs): the first picture is an ordinary JPEG and is the photo itself.
SUPPORTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "TIFF", "BMP", "AVIF")
SAVE_FORMATS = ("png", "jpeg", "webp")

_FORMAT_ALIASES = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
_READABLE_NAMES = "JPEG, PNG, WebP, AVIF, TIFF or BMP"

# File signatures of the formats we take: a file that starts like one of these but does not
# decode is a damaged photo, not "some other kind of file".
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"BM")

_ORIENTATION = 0x0112
_EXIF_IFD = 0x8769
# Base-IFD tags worth keeping: descriptive, not structural, not location.
_KEEP_BASE_TAGS = frozenset({
    0x010E,  # ImageDescription
    0x010F,  # Make
    0x0110,  # Model
    0x011A, 0x011B, 0x0128,  # X/YResolution, ResolutionUnit
    0x0131,  # Software
    0x0132,  # DateTime
    0x013B,  # Artist
    0x8298,  # Copyright
})
# Exif-IFD tags dropped: maker notes (opaque, often hold serials or GPS), owner/serial numbers,
# a unique image ID (tracks the photo across copies) and the Interoperability pointer.
_DROP_EXIF_TAGS = frozenset({0x927C, 0xA430, 0xA431, 0xA435, 0xA420, 0xA005})

# Modes Pillow decodes to that we first turn into a plain one (P: palette transparency -> alpha).
_MODE_TARGET = {"P": "RGBA", "PA": "RGBA", "RGBa": "RGBA", "La": "LA", "RGBX": "RGB", "1": "L"}

_truncation_lock = threading.Lock()
_srgb_profile: ImageCms.ImageCmsProfile | None = None


@dataclass(frozen=True)
class LoadedImage:
    """A decoded photo. ``pixels`` is ``(H, W, 3) float32 RGB in [0, 1]``, sRGB, upright.

    ``original_size`` is ``(width, height)`` as stored in the file, before orientation.
    ``exif_kept`` is the cleaned EXIF blob (see :func:`clean_exif`) or None; it is only written
    to an output when the user asks to keep metadata.
    """

    path: Path
    pixels: np.ndarray
    format: str
    original_size: tuple[int, int]
    exif_kept: bytes | None
    icc_converted: bool
    # What the user should know about how the file was read (an animation's other frames).
    notes: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


# ------------------------------------------------------------------------------------ loading


def load_image(path: Path | str, *, max_megapixels: float = 100.0,
               min_side: int = 64) -> LoadedImage:
    """Decode ``path`` completely into a :class:`LoadedImage`; the file is only read.

    Raises ImageMissingError, ImageUnreadableError, NotAnImageError, UnsupportedFormatError,
    ImageTooSmallError or ImageTooLargeError (all :class:`ImageError`), whose message names the
    file and says what to do.
    """
    path = Path(path)
    with _open_regular(path) as fh:
        return _load_from(fh, path, max_megapixels=max_megapixels, min_side=min_side)


def _open_regular(path: Path) -> IO[bytes]:
    """Open a photo for reading, refusing anything that is not a regular file *before* opening
    it: ``open`` on a FIFO blocks until a writer appears (forever, for a stray pipe), and a
    device file never ends. Errors are :class:`ImageError` subclasses that name the file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageMissingError(path, "the file does not exist (moved or deleted?)") from None
    except PermissionError:
        raise ImageUnreadableError(
            path, "permission denied: you are not allowed to read this file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageUnreadableError(
                path, "it is a symbolic link that points back to itself (a link loop)") from None
        raise ImageUnreadableError(path, f"the file cannot be opened ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageMissingError(path, "this is a folder, not a photo")
    if not stat.S_ISREG(st.st_mode):
        raise NotAnImageError(path, "this is not a regular file (a pipe, device or socket); "
                                    "only photo files can be protected")
    try:
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    except PermissionError:
        raise ImageUnreadableError(
            path, "permission denied: you are not allowed to read this file") from None
    except OSError as exc:
        raise ImageUnreadableError(path, f"the file cannot be opened ({exc.strerror})") from None


def file_sha256(path: Path | str) -> str:
    """SHA-256 of a photo file's bytes, with the same checks and errors as :func:`load_image`
    (never blocks on a FIFO)."""
    path = Path(path)
    with _open_regular(path) as fh:
        try:
            return sha256_stream(fh)
        except OSError as exc:
            raise ImageUnreadableError(path, f"the file cannot be read ({exc.strerror})"
                                       ) from None


def decode_bytes(data: bytes) -> np.ndarray:
    """Decode an encoded image held in memory: ``(H, W, 3) float32 RGB in [0, 1]``, sRGB.

    Same rules as :func:`load_image` (any size from 1 pixel up); errors name ``<memory>``.
    """
    return _load_from(io.BytesIO(data), Path("<memory>"), max_megapixels=100.0,
                      min_side=1).pixels


def _load_from(fh: IO[bytes], path: Path, *, max_megapixels: float,
               min_side: int) -> LoadedImage:
    head = fh.read(16)
    fh.seek(0)
    if not head:
        raise NotAnImageError(path, "the file is empty (0 bytes)")
    img = _open_header(fh, path, head)
    with img:
        fmt = img.format or "unknown"
        if fmt not in SUPPORTED_FORMATS:
            raise UnsupportedFormatError(
                path, f"{fmt} files are not supported: save it as {_READABLE_NAMES} first")
        w, h = img.size
        if w * h > max_megapixels * 1e6:
            raise ImageTooLargeError(
                path, f"{w}x{h} is {w * h / 1e6:.0f} megapixels, more than the limit of "
                      f"{max_megapixels:g}: downscale it first")
        if min(w, h) < min_side:
            raise ImageTooSmallError(
                path, f"{w}x{h} is too small: the shorter side must be at least {min_side} "
                      "pixels")
        notes = _frames_note(img, fmt, path)
        _decode_fully(img, path)
        orientation = _orientation(img)
        pixels, converted = _to_srgb_float(img, path)
        exif = _exif_of(img)
    pixels = np.ascontiguousarray(_apply_orientation(pixels, orientation))
    return LoadedImage(path=path, pixels=pixels, format=fmt, original_size=(w, h),
                       exif_kept=exif, icc_converted=converted, notes=notes)


def _frames_note(img: ImageFile.ImageFile, fmt: str, path: Path) -> tuple[str, ...]:
    """A file holding several pictures is read as its first one: say so. MPO's other pictures
    are gain or depth maps of the same photo, not frames anyone would miss."""
    frames = int(getattr(img, "n_frames", 1) or 1)
    if frames <= 1 or fmt == "MPO":
        return ()
    what = "pages" if fmt == "TIFF" else "frames (an animation)"
    return (f"{path.name} holds {frames} {what}: only the first was protected, and it is written "
            "as a still picture.",)


def _open_header(fh: IO[bytes], path: Path, head: bytes) -> ImageFile.ImageFile:
    """Read only the header (no pixels). Pillow's own bomb guard becomes ImageTooLargeError when
    it refuses outright; its warning is left to our own ``max_megapixels`` check."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fh)
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        amount = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "so many pixels"
        raise ImageTooLargeError(
            path, f"it announces {amount}, too many to decode safely: downscale it first"
        ) from None
    except Image.UnidentifiedImageError:
        if head[4:12] in (b"ftypavif", b"ftypavis") and not _pillow_reads_avif():
            raise UnsupportedFormatError(
                path, "this installation's Pillow cannot read AVIF: save it as JPEG or PNG "
                      "first, or install a Pillow built with AVIF") from None
        if _looks_like_supported(head):
            raise ImageUnreadableError(
                path, "the file is damaged or incomplete (its header cannot be read)") from None
        raise NotAnImageError(
            path, f"this is not an image file; photos must be {_READABLE_NAMES}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageUnreadableError(
            path, f"the file is damaged or incomplete ({exc})") from None


def _pillow_reads_avif() -> bool:
    from PIL import features

    return bool(features.check("avif"))


def _looks_like_supported(head: bytes) -> bool:
    return (head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
            or head[4:12] in (b"ftypavif", b"ftypavis"))


def _decode_fully(img: ImageFile.ImageFile, path: Path) -> None:
    """Decode every pixel now, refusing truncated data even if some other code in the process
    set Pillow's global LOAD_TRUNCATED_IMAGES (we switch it off for the duration)."""
    try:
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            with _truncation_lock:
                saved = ImageFile.LOAD_TRUNCATED_IMAGES
                ImageFile.LOAD_TRUNCATED_IMAGES = False
                try:
                    img.load()
                finally:
                    ImageFile.LOAD_TRUNCATED_IMAGES = saved
        else:
            img.load()
    except MemoryError:
        raise ImageTooLargeError(path, "not enough memory to decode this image") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(path, f"decoding was stopped as unsafe ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise ImageUnreadableError(
            path, f"the file is damaged or incomplete and cannot be decoded ({exc})") from None


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(_ORIENTATION, 1))
    except Exception:  # broken EXIF must not stop a photo that decodes fine
        return 1
    return value if 1 <= value <= 8 else 1


def _apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels (H, W, C) upright for EXIF orientation 1-8 (TIFF/EXIF 2.3 meaning)."""
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1]
    if orientation == 5:
        return pixels.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(pixels, k=-1)
    if orientation == 7:
        return np.rot90(pixels, k=2).transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(pixels, k=1)
    return pixels


def _srgb() -> ImageCms.ImageCmsProfile:
    global _srgb_profile
    if _srgb_profile is None:
        _srgb_profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return _srgb_profile


def _to_srgb_float(img: Image.Image, path: Path) -> tuple[np.ndarray, bool]:
    """Any supported mode -> ``(H, W, 3) float32`` sRGB in [0, 1], alpha composited on white.
    Returns the array and whether an embedded ICC profile was applied."""
    icc = img.info.get("icc_profile")
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_grey(img), False
    try:
        if mode in _MODE_TARGET:
            img = img.convert(_MODE_TARGET[mode])
        elif mode not in ("RGB", "RGBA", "L", "LA", "CMYK"):
            img = img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise UnsupportedFormatError(
            path, f"its colour mode {mode} cannot be converted to RGB ({exc})") from None
    alpha: np.ndarray | None = None
    if img.mode in ("RGBA", "LA"):
        alpha = np.asarray(img.getchannel("A"), dtype=np.float32) / 255.0
        img = img.convert("RGB" if img.mode == "RGBA" else "L")
    rgb, converted = _apply_icc(img, icc)
    pixels = np.asarray(rgb, dtype=np.float32)
    pixels /= np.float32(255.0)  # in place: a 48 MP photo would need a second 576 MB array
    if alpha is not None:
        a = alpha[..., None]
        pixels = pixels * a + (1.0 - a)
    return pixels.astype(np.float32, copy=False), converted


def _apply_icc(img: Image.Image, icc: bytes | None) -> tuple[Image.Image, bool]:
    """Convert an RGB, L or CMYK image to sRGB RGB with its embedded profile (perceptual intent).
    No profile, an sRGB profile, or a profile that does not fit the pixels: plain conversion."""
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            if "srgb" not in ImageCms.getProfileDescription(src).lower():
                transform = ImageCms.buildTransform(src, _srgb(), img.mode, "RGB")
                converted = ImageCms.applyTransform(img, transform)
                if converted is not None:
                    return converted, True
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass  # an unusable profile is ignored, like browsers do
    return (img if img.mode == "RGB" else img.convert("RGB")), False


def _high_depth_grey(img: Image.Image) -> np.ndarray:
    """16-bit (or 32-bit int / float) greyscale, kept at full precision until now."""
    raw = np.asarray(img)
    if img.mode == "F":
        grey = np.clip(raw.astype(np.float32), 0.0, 1.0)
    else:  # I;16* and I hold 16-bit samples in Pillow (PNG, TIFF)
        grey = np.clip(raw.astype(np.float64) / 65535.0, 0.0, 1.0).astype(np.float32)
    return np.repeat(grey[..., None], 3, axis=2)


# ------------------------------------------------------------------------------------ EXIF


def _exif_of(img: Image.Image) -> bytes | None:
    try:
        return clean_exif(img.getexif())
    except Exception:  # broken metadata is dropped, never a reason to refuse a photo
        return None


def clean_exif(exif: Image.Exif | bytes | None) -> bytes | None:
    """The metadata we are willing to carry to an output: descriptive base tags (make, model,
    date, artist, copyright, ...) and the Exif sub-IFD (exposure, date taken, ...) minus maker
    notes, serial numbers and unique IDs. No GPS, no thumbnail, no orientation, no TIFF layout
    tags. Returns an ``Exif\\0\\0`` blob, or None when nothing is left."""
    if exif is None:
        return None
    if isinstance(exif, (bytes, bytearray)):
        parsed = Image.Exif()
        parsed.load(bytes(exif))
        exif = parsed
    kept = Image.Exif()
    for tag, value in exif.items():
        if tag in _KEEP_BASE_TAGS and not isinstance(value, dict):
            kept[tag] = value
    sub = {tag: value for tag, value in exif.get_ifd(_EXIF_IFD).items()
           if tag not in _DROP_EXIF_TAGS and not isinstance(value, dict)}
    if sub:
        kept[_EXIF_IFD] = sub
    if not len(kept):
        return None
    return kept.tobytes()


# ------------------------------------------------------------------------------------ saving


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """``float [0, 1]`` -> ``uint8`` via ``rint(clip(x, 0, 1) * 255)`` (round half to even): the
    one 8-bit quantisation used before saving. uint8 input is returned unchanged."""
    arr = np.asarray(pixels)
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"expected float pixels in [0, 1] or uint8, got {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("pixels contain NaN or infinity")
    # One float temporary, worked in place: a 48 MP photo would otherwise hold three.
    work = np.clip(arr, 0.0, 1.0)
    work *= 255.0
    np.rint(work, out=work)
    return work.astype(np.uint8)


def _normalise_format(fmt: str) -> str:
    key = _FORMAT_ALIASES.get(str(fmt).lower().lstrip("."))
    if key is None:
        raise ValueError(f"cannot save as {fmt!r}; choose one of {', '.join(SAVE_FORMATS)}")
    return key


def encode_image(pixels: np.ndarray, format: str, *, quality: int = 95,
                 exif: bytes | None = None) -> bytes:
    """Encode ``(H, W, 3)`` float [0, 1] (or uint8) RGB pixels as PNG, JPEG or WebP bytes.

    PNG is lossless (no optimiser pass); JPEG uses ``quality`` with 4:4:4 chroma at quality >= 90
    (4:2:0 below); WebP uses ``quality`` and is lossless at 100. No ICC profile (sRGB implied)
    and no metadata unless ``exif`` is given, which is cleaned again by :func:`clean_exif`.
    """
    fmt = _normalise_format(format)
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be 1-100, got {quality}")
    arr = to_uint8(pixels)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) pixels, got shape {arr.shape}")
    img = Image.fromarray(np.ascontiguousarray(arr), mode="RGB")
    options: dict[str, Any] = {}
    cleaned = clean_exif(exif) if exif else None
    if cleaned:
        options["exif"] = cleaned
    if fmt == "png":
        options.update(optimize=False)
    elif fmt == "jpeg":
        options.update(quality=int(quality), subsampling=0 if quality >= 90 else 2)
    else:
        options.update(quality=int(quality), lossless=quality == 100)
    buf = io.BytesIO()
    img.save(buf, format=fmt.upper(), **options)
    return buf.getvalue()


def save_image(pixels: np.ndarray, dest: Path, *, format: str | None = None, quality: int = 95,
               exif: bytes | None = None) -> Path:
    """Quantise, encode and write to ``dest`` or the next free ``-N`` name; never overwrites.

    ``format`` defaults to ``dest``'s extension. Returns the path actually written; raises
    :class:`~dladiff_app.core.errors.OutputError` when the file cannot be written.
    """
    dest = Path(dest)
    fmt = _normalise_format(format if format is not None else dest.suffix)
    named = _FORMAT_ALIASES.get(dest.suffix.lower().lstrip("."))
    if named is not None and named != fmt:
        raise ValueError(f"{dest.name} has a .{named} name but {fmt} was asked for")
    return create_exclusive(dest, encode_image(pixels, fmt, quality=quality, exif=exif))


# Most file systems allow 255 bytes per name. Room is kept for a "-NNNN" number (a free name is
# picked on save) and for the hidden temporary name atomic.py derives from it.
_MAX_NAME_BYTES = 255 - 6


def _fit_stem(stem: str, tail: str) -> str:
    """``stem`` shortened (whole characters, file-system bytes counted) so ``stem + tail`` fits."""
    room = _MAX_NAME_BYTES - len(os.fsencode(tail))
    while len(os.fsencode(stem)) > room:
        stem = stem[:-1]
    return stem


def protected_name(source: Path, out_dir: Path, fmt: str, *, label: str = "protected") -> Path:
    """``out_dir/<source stem>-<label>.<png|jpg|webp>`` (the free name is picked on save).

    ``label`` is ``protected``, or ``unprotected`` for a photo no shield could change (exported
    only on request). A very long stem is shortened so the name stays within 255 bytes."""
    tail = f"-{label}.{_EXTENSIONS[_normalise_format(fmt)]}"
    return Path(out_dir) / (_fit_stem(Path(source).stem, tail) + tail)


__all__ = [
    "SAVE_FORMATS", "SUPPORTED_FORMATS", "ImageError", "LoadedImage", "clean_exif",
    "decode_bytes", "encode_image", "file_sha256", "load_image", "protected_name", "save_image",
    "to_uint8",
]
