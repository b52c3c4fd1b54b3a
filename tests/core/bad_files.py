"""Builders of real problem files (and a few tricky good ones) for I/O tests.

Every function writes a real file into ``folder`` and returns its path; nothing is mocked, so
other test modules (CLI, GUI, engine runner) can reuse them to check how a refusal is reported.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def sample_rgb(height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    """A photo-like ``(H, W, 3) uint8`` image: smooth gradients plus mild noise and an
    asymmetric red block in the top-left corner (so rotations are visible)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.stack([x / max(width - 1, 1), y / max(height - 1, 1),
                    0.5 + 0.4 * np.sin(x / 9.0) * np.cos(y / 7.0)], axis=2)
    img = img * 0.8 + 0.1 + rng.normal(0.0, 0.02, img.shape)
    out = np.rint(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
    out[: height // 4, : width // 4] = (220, 20, 20)
    return out


def save_pil(img: Image.Image, path: Path, **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **options)  # type: ignore[arg-type]
    return path


def good_jpeg(folder: Path, name: str = "photo.jpg", size: tuple[int, int] = (128, 96),
              **options: object) -> Path:
    w, h = size
    return save_pil(Image.fromarray(sample_rgb(h, w)), folder / name, quality=92, **options)


def truncated_jpeg(folder: Path, name: str = "truncated.jpg") -> Path:
    """A JPEG cut off half-way through its scan data (header intact, pixels missing)."""
    buf = io.BytesIO()
    Image.fromarray(sample_rgb(96, 128)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    path = folder / name
    path.write_bytes(data[: len(data) // 2])
    return path


def header_only_jpeg(folder: Path, name: str = "cut_header.jpg") -> Path:
    """A JPEG cut inside its header: starts like a JPEG but cannot even be identified."""
    buf = io.BytesIO()
    Image.fromarray(sample_rgb(96, 128)).save(buf, "JPEG")
    path = folder / name
    path.write_bytes(buf.getvalue()[:40])
    return path


def corrupt_png(folder: Path, name: str = "corrupt.png") -> Path:
    """A PNG whose compressed pixel data was overwritten with garbage (CRC left stale)."""
    buf = io.BytesIO()
    Image.fromarray(sample_rgb(96, 128)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    idat = data.find(b"IDAT")
    data[idat + 20: idat + 220] = bytes(range(200))
    path = folder / name
    path.write_bytes(bytes(data))
    return path


def empty_file(folder: Path, name: str = "empty.jpg") -> Path:
    path = folder / name
    path.write_bytes(b"")
    return path


def text_as_jpg(folder: Path, name: str = "notes.jpg") -> Path:
    path = folder / name
    path.write_text("Shopping list: milk, eggs, bread.\n" * 20, encoding="utf-8")
    return path


def tiny_png(folder: Path, name: str = "tiny.png", size: tuple[int, int] = (1, 1)) -> Path:
    return save_pil(Image.new("RGB", size, (10, 200, 30)), folder / name)


def gif_file(folder: Path, name: str = "anim.gif") -> Path:
    frames = [Image.new("P", (80, 80), i) for i in range(3)]
    return save_pil(frames[0], folder / name, save_all=True, append_images=frames[1:])


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def bomb_png(folder: Path, width: int = 20000, height: int = 10000,
             name: str = "bomb.png") -> Path:
    """A valid PNG header announcing ``width x height`` RGB pixels with (almost) no pixel data:
    200 megapixels in a few dozen bytes by default."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))
    path = folder / name
    path.write_bytes(data)
    return path


def bomb_bmp(folder: Path, width: int = 12000, height: int = 8000,
             name: str = "bomb.bmp") -> Path:
    """A 24-bit BMP header announcing ``width x height`` pixels, followed by no pixels."""
    row = (width * 3 + 3) // 4 * 4
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, row * height, 2835, 2835,
                       0, 0)
    header = struct.pack("<2sIHHI", b"BM", 14 + 40 + row * height, 0, 0, 14 + 40)
    path = folder / name
    path.write_bytes(header + info)
    return path


def a_folder(folder: Path, name: str = "looks_like.jpg") -> Path:
    path = folder / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def missing_path(folder: Path, name: str = "gone.jpg") -> Path:
    return folder / name


# ---------------------------------------------------------------------- ICC profiles

# Adobe RGB (1998) primaries adapted to the ICC D50 white (Bradford), XYZ columns r, g, b.
ADOBE_RGB_D50 = np.array([[0.6097559, 0.2052401, 0.1492240],
                          [0.3111242, 0.6256560, 0.0632197],
                          [0.0194811, 0.0608902, 0.7448387]])
ADOBE_RGB_GAMMA = 563 / 256  # 2.19921875, stored as u8Fixed8 in the curve tags
D50 = (0.9642, 1.0, 0.8249)


def _s15f16(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz_tag(xyz: tuple[float, float, float] | np.ndarray) -> bytes:
    return b"XYZ " + b"\0" * 4 + b"".join(_s15f16(float(v)) for v in xyz)


def _desc_tag(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\0"
    return (b"desc" + b"\0" * 4 + struct.pack(">I", len(ascii_)) + ascii_
            + struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + b"\0" * 67)


def matrix_rgb_icc(description: str = "Adobe RGB (1998) compatible test profile",
                   colorants: np.ndarray = ADOBE_RGB_D50,
                   gamma: float = ADOBE_RGB_GAMMA) -> bytes:
    """A minimal ICC v2 RGB display profile (matrix + pure-gamma curves), Adobe-RGB-like by
    default: enough for LittleCMS to convert from it."""
    curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    tags = [
        (b"desc", _desc_tag(description)),
        (b"cprt", b"text" + b"\0" * 4 + b"No copyright, test data\0"),
        (b"wtpt", _xyz_tag(D50)),
        (b"rXYZ", _xyz_tag(colorants[:, 0])),
        (b"gXYZ", _xyz_tag(colorants[:, 1])),
        (b"bXYZ", _xyz_tag(colorants[:, 2])),
        (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, blob = b"", b""
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(blob), len(data))
        blob += data
    body = struct.pack(">I", len(tags)) + table + blob
    size = 128 + len(body)
    header = (struct.pack(">I", size) + b"\0" * 4 + struct.pack(">I", 0x02100000) + b"mntr"
              + b"RGB " + b"XYZ " + struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + b"acsp"
              + b"\0" * 4 + b"\0" * 4 + b"\0" * 8 + b"\0" * 8 + struct.pack(">I", 0)
              + b"".join(_s15f16(v) for v in D50) + b"\0" * 4)
    header += b"\0" * (128 - len(header))
    return header + body


def srgb_icc() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
