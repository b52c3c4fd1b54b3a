"""Loading refuses every bad file with a typed, readable error and normalises every good one;
saving is exact, atomic and never overwrites; metadata never leaks location."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from dladiff_app.core import atomic
from dladiff_app.core.errors import (
    ImageError,
    ImageMissingError,
    ImageTooLargeError,
    ImageTooSmallError,
    ImageUnreadableError,
    NotAnImageError,
    OutputError,
    UnsupportedFormatError,
)
from dladiff_app.core.imageio import (
    decode_bytes,
    encode_image,
    load_image,
    protected_name,
    save_image,
    to_uint8,
)
from tests.core import bad_files as bf

GPS_IFD = 0x8825
EXIF_IFD = 0x8769


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_unchanged(path: Path, **kwargs: object):
    """load_image, asserting the source file is byte-identical afterwards."""
    before = _sha(path)
    try:
        return load_image(path, **kwargs)  # type: ignore[arg-type]
    finally:
        assert _sha(path) == before, f"{path.name} was modified by loading"


# ------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(("maker", "error", "words"), [
    (bf.truncated_jpeg, ImageUnreadableError, "damaged or incomplete"),
    (bf.header_only_jpeg, ImageUnreadableError, "damaged or incomplete"),
    (bf.corrupt_png, ImageUnreadableError, "damaged or incomplete"),
    (bf.empty_file, NotAnImageError, "empty"),
    (bf.text_as_jpg, NotAnImageError, "not an image"),
    (bf.tiny_png, ImageTooSmallError, "at least 64"),
    (bf.gif_file, UnsupportedFormatError, "JPEG, PNG, WebP, AVIF, TIFF or BMP"),
    (bf.bomb_png, ImageTooLargeError, "200 megapixels"),
])
def test_bad_file_is_refused_with_a_typed_readable_error(tmp_path, maker, error, words):
    path = maker(tmp_path)
    with pytest.raises(error) as info:
        load_unchanged(path)
    assert isinstance(info.value, ImageError)
    assert str(info.value).startswith(path.name + ": ")
    assert words in str(info.value)


def test_folder_and_missing_path_are_refused(tmp_path):
    with pytest.raises(ImageMissingError, match="folder"):
        load_image(bf.a_folder(tmp_path))
    with pytest.raises(ImageMissingError, match="does not exist"):
        load_image(bf.missing_path(tmp_path))


def test_size_limit_is_checked_on_the_header_before_decoding(tmp_path):
    # 96 MP announced, no pixel data at all: a decode attempt would report "damaged" instead.
    path = bf.bomb_bmp(tmp_path)
    with pytest.raises(ImageTooLargeError, match="96 megapixels, more than the limit of 50"):
        load_unchanged(path, max_megapixels=50)
    with pytest.raises(ImageTooLargeError):
        load_unchanged(bf.bomb_png(tmp_path, 3000, 2000, name="six_mp.png"), max_megapixels=5)


def test_truncated_file_refused_even_if_pillow_is_told_to_accept_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageUnreadableError):
        load_image(bf.truncated_jpeg(tmp_path))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for whoever set it


def test_pillow_bomb_guard_becomes_our_error_and_its_warning_never_escapes(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow errors above 2000 pixels
    with pytest.raises(ImageTooLargeError, match="too many to decode safely"):
        load_image(bf.tiny_png(tmp_path, "big.png", size=(64, 64)), min_side=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow would only warn at 1600 pixels: not our rule
        img = load_image(bf.tiny_png(tmp_path, "warn.png", size=(40, 40)), min_side=8)
    assert img.pixels.shape == (40, 40, 3)


def test_min_side_is_configurable(tmp_path):
    path = bf.tiny_png(tmp_path, size=(40, 30))
    with pytest.raises(ImageTooSmallError, match="40x30"):
        load_image(path)
    assert load_image(path, min_side=30).pixels.shape == (30, 40, 3)


def _child_load_as_nobody(path: Path) -> str:
    """Fork, drop root to 'nobody' in the child, try to load; return the error class name."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        result = "no error"
        try:
            os.setgid(65534)
            os.setuid(65534)
            load_image(path)
        except ImageError as exc:
            result = f"{type(exc).__name__}|{exc}"
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            result = f"unexpected {type(exc).__name__}: {exc}"
        os.write(write_fd, result.encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        out = fh.read().decode()
    os.waitpid(pid, 0)
    return out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs POSIX permissions and fork")
def test_permission_denied_is_unreadable_error(tmp_path):
    path = bf.good_jpeg(tmp_path)
    path.chmod(0)
    try:
        if os.geteuid() != 0:
            with pytest.raises(ImageUnreadableError, match="permission denied"):
                load_image(path)
        else:
            # root reads anything: a forked child that dropped to 'nobody' gets the real EACCES
            name, _, message = _child_load_as_nobody(path).partition("|")
            assert name == "ImageUnreadableError", name
            assert message.startswith("photo.jpg: permission denied")
    finally:
        path.chmod(0o644)


# ------------------------------------------------------------------------------ good files


def test_jpeg_loads_as_float_rgb_with_metadata(tmp_path):
    path = bf.good_jpeg(tmp_path)
    img = load_unchanged(path)
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (96, 128, 3)
    assert img.pixels.min() >= 0.0 and img.pixels.max() <= 1.0
    assert (img.width, img.height, img.original_size) == (128, 96, (128, 96))
    assert img.format == "JPEG" and img.path == path and img.icc_converted is False
    ref = bf.sample_rgb(96, 128).astype(np.float32) / 255
    assert np.abs(img.pixels - ref).mean() < 6 / 255  # q92 JPEG of a noisy picture


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_load_exactly(tmp_path, fmt):
    ref = bf.sample_rgb(70, 90)
    options = {"lossless": True} if fmt == "WEBP" else {}
    path = bf.save_pil(Image.fromarray(ref), tmp_path / f"x.{fmt.lower()}", format=fmt,
                       **options)
    img = load_unchanged(path)
    assert img.format == fmt
    np.testing.assert_array_equal(to_uint8(img.pixels), ref)


def test_lossy_webp_loads(tmp_path):
    ref = bf.sample_rgb(70, 90)
    path = bf.save_pil(Image.fromarray(ref), tmp_path / "x.webp", quality=90)
    img = load_unchanged(path)
    assert img.format == "WEBP" and np.abs(img.pixels * 255 - ref).mean() < 6


def test_cmyk_jpeg_colours_close_to_rgb_original(tmp_path):
    ref = bf.sample_rgb(80, 96)
    cmyk = Image.fromarray(ref).convert("CMYK")
    path = bf.save_pil(cmyk, tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    img = load_unchanged(path)
    assert np.abs(img.pixels * 255 - ref).mean() < 4


def test_16_bit_png_keeps_precision(tmp_path):
    values = (np.arange(80 * 80, dtype=np.uint32).reshape(80, 80) * 7 + 101).astype(np.uint16)
    path = bf.save_pil(Image.fromarray(values), tmp_path / "deep.png")
    img = load_unchanged(path)
    expected = values.astype(np.float64) / 65535
    np.testing.assert_allclose(img.pixels[..., 1], expected, atol=1e-7)
    off_grid = np.abs(img.pixels * 255 - np.rint(img.pixels * 255))
    assert off_grid.max() > 0.1  # not on the 1/255 grid: 16-bit detail survived


def test_palette_png_with_transparency_is_composited_on_white(tmp_path):
    idx = np.zeros((64, 64), dtype=np.uint8)
    idx[:, 32:] = 1
    pal = Image.fromarray(idx, mode="L").convert("P")
    pal.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    path = bf.save_pil(pal, tmp_path / "pal.png", transparency=0)
    assert Image.open(path).mode == "P"
    px = load_unchanged(path).pixels
    np.testing.assert_allclose(px[:, :32], 1.0)
    np.testing.assert_allclose(px[:, 32:] * 255, np.broadcast_to([200, 30, 40], (64, 32, 3)),
                               atol=1e-4)


def test_rgba_png_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 128
    rgba[:, :10, 3] = 255
    path = bf.save_pil(Image.fromarray(rgba, mode="RGBA"), tmp_path / "alpha.png")
    px = load_unchanged(path).pixels
    a = 128 / 255
    np.testing.assert_allclose(px[0, 20], [1.0, 1 - a, 1 - a], atol=1e-6)
    np.testing.assert_allclose(px[0, 0], [1.0, 0.0, 0.0], atol=1e-6)


def test_first_page_of_multipage_tiff(tmp_path):
    pages = [Image.new("RGB", (80, 70), c) for c in ((250, 0, 0), (0, 0, 250), (0, 250, 0))]
    path = bf.save_pil(pages[0], tmp_path / "pages.tiff", save_all=True,
                       append_images=pages[1:])
    assert Image.open(path).n_frames == 3
    px = load_unchanged(path).pixels
    np.testing.assert_allclose(px[5, 5] * 255, [250, 0, 0], atol=1e-4)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow_exif_transpose(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = bf.save_pil(Image.fromarray(bf.sample_rgb(72, 100)), tmp_path / "o.png",
                       exif=exif.tobytes())
    img = load_unchanged(path)
    with Image.open(path) as raw:
        upright = np.asarray(ImageOps.exif_transpose(raw).convert("RGB"))
    np.testing.assert_array_equal(to_uint8(img.pixels), upright)
    assert img.original_size == (100, 72)


@pytest.mark.parametrize(("orientation", "red_corner"), [(6, "top_right"), (3, "bottom_right")])
def test_exif_rotated_jpeg(tmp_path, orientation, red_corner):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = bf.good_jpeg(tmp_path, size=(128, 96), exif=exif.tobytes())  # red block top-left
    img = load_unchanged(path)
    assert img.original_size == (128, 96)
    assert img.pixels.shape == ((128, 96, 3) if orientation == 6 else (96, 128, 3))
    corners = {"top_right": img.pixels[3, -4], "bottom_right": img.pixels[-4, -4]}
    np.testing.assert_allclose(corners[red_corner] * 255, [220, 20, 20], atol=12)
    # the stored top-left (red) is no longer top-left
    assert np.abs(img.pixels[3, 3] * 255 - [220, 20, 20]).max() > 60


def _adobe_to_srgb(rgb255: np.ndarray) -> np.ndarray:
    """Independent reference: Adobe RGB -> XYZ(D50) -> linear sRGB (D50-adapted) -> sRGB."""
    srgb_d50 = np.array([[0.4360747, 0.3850649, 0.1430804],
                         [0.2225045, 0.7168786, 0.0606169],
                         [0.0139322, 0.0971045, 0.7141733]])
    linear = (rgb255 / 255.0) ** bf.ADOBE_RGB_GAMMA
    lin_srgb = np.clip(np.linalg.solve(srgb_d50, bf.ADOBE_RGB_D50 @ linear), 0, 1)
    return np.where(lin_srgb <= 0.0031308, 12.92 * lin_srgb,
                    1.055 * lin_srgb ** (1 / 2.4) - 0.055) * 255


@pytest.mark.parametrize(("fmt", "tol"), [("PNG", 2.0), ("JPEG", 3.0)])
def test_adobe_rgb_profile_is_converted_to_srgb(tmp_path, fmt, tol):
    colours = np.array([[60, 180, 90], [200, 120, 60], [128, 128, 128], [90, 110, 200]])
    blocks = np.repeat(np.repeat(colours[None].astype(np.uint8), 32, axis=0), 32, axis=1)
    path = bf.save_pil(Image.fromarray(blocks), tmp_path / f"adobe.{fmt.lower()}", format=fmt,
                       icc_profile=bf.matrix_rgb_icc(), **({"quality": 98, "subsampling": 0}
                                                          if fmt == "JPEG" else {}))
    img = load_unchanged(path, min_side=32)
    assert img.icc_converted is True
    for i, colour in enumerate(colours):
        got = img.pixels[12:20, 32 * i + 12: 32 * i + 20].reshape(-1, 3).mean(0) * 255
        want = _adobe_to_srgb(colour.astype(np.float64))
        assert np.abs(got - want).max() <= tol, (colour, got, want)
    # a saturated green really moves: the conversion is not a no-op
    assert abs(_adobe_to_srgb(np.array([60.0, 180, 90]))[0] - 60) > 10


def test_embedded_srgb_profile_is_a_no_op(tmp_path):
    ref = bf.sample_rgb(64, 80)
    path = bf.save_pil(Image.fromarray(ref), tmp_path / "srgb.png", icc_profile=bf.srgb_icc())
    img = load_unchanged(path)
    assert img.icc_converted is False
    np.testing.assert_array_equal(to_uint8(img.pixels), ref)


# ------------------------------------------------------------------------------ EXIF


def _camera_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif[0x0110] = "EOS 5D"
    exif[0x0112] = 6
    exif[EXIF_IFD] = {0x9003: "2021:06:01 12:00:00", 0x927C: b"maker secrets",
                      0xA431: "SERIAL-123"}
    exif[GPS_IFD] = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)}
    return exif


def test_exif_kept_has_no_gps_makernote_serial_or_orientation(tmp_path):
    path = bf.good_jpeg(tmp_path, exif=_camera_exif().tobytes())
    kept = load_unchanged(path).exif_kept
    assert kept is not None
    exif = Image.Exif()
    exif.load(kept)
    assert exif[0x010F] == "Canon" and exif[0x0110] == "EOS 5D"
    assert 0x0112 not in exif and GPS_IFD not in exif and not exif.get_ifd(GPS_IFD)
    sub = exif.get_ifd(EXIF_IFD)
    assert sub[0x9003] == "2021:06:01 12:00:00"
    assert 0x927C not in sub and 0xA431 not in sub


def test_tiff_layout_tags_are_not_carried_as_exif(tmp_path):
    path = bf.save_pil(Image.fromarray(bf.sample_rgb(64, 64)), tmp_path / "t.tiff",
                       tiffinfo={0x010F: "Nikon", 0x0112: 1})
    exif = Image.Exif()
    exif.load(load_unchanged(path).exif_kept)
    assert dict(exif) == {0x010F: "Nikon"}  # no ImageWidth, StripOffsets, Orientation, ...


def _saved_exif(path: Path) -> Image.Exif:
    with Image.open(path) as im:
        return im.getexif()


def test_saved_output_has_no_metadata_by_default_and_cleaned_metadata_on_request(tmp_path):
    src = load_image(bf.good_jpeg(tmp_path, exif=_camera_exif().tobytes()))
    for fmt in ("jpeg", "png", "webp"):
        plain = save_image(src.pixels, tmp_path / f"plain.{fmt}", format=fmt)
        assert len(_saved_exif(plain)) == 0
        kept = save_image(src.pixels, tmp_path / f"kept.{fmt}", format=fmt,
                          exif=src.exif_kept)
        exif = _saved_exif(kept)
        assert exif[0x010F] == "Canon", fmt
        assert not exif.get_ifd(GPS_IFD) and 0x0112 not in exif
    # a raw camera blob passed by mistake is cleaned again on the way out
    raw = save_image(src.pixels, tmp_path / "raw.jpg", exif=_camera_exif().tobytes())
    exif = _saved_exif(raw)
    assert not exif.get_ifd(GPS_IFD) and 0x0112 not in exif
    assert 0x927C not in exif.get_ifd(EXIF_IFD)


# ------------------------------------------------------------------------------ saving


def test_to_uint8_rounds_half_to_even_and_clips():
    grid = np.arange(256, dtype=np.float64) / 255
    np.testing.assert_array_equal(to_uint8(grid[None, :, None]).ravel(), np.arange(256))
    halves = np.arange(255) + 0.5
    exact = (halves / 255) * 255 == halves  # values that really sit half-way after scaling
    assert exact.sum() > 50
    got = to_uint8((halves / 255)[None, :, None]).ravel()[exact]
    np.testing.assert_array_equal(got, 2 * np.round(halves[exact] / 2))  # to the even one
    assert got[0] == 0 and set(got % 2) == {0}
    np.testing.assert_array_equal(to_uint8(np.array([[[-0.2, 1.3, 0.5]]])), [[[0, 255, 128]]])
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(np.array([[[np.nan, 0, 0]]]))


def test_png_round_trip_is_exact_on_the_uint8_grid(tmp_path):
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    noisy = ref.astype(np.float32) / 255 + rng.uniform(-0.4, 0.4, ref.shape) / 255
    out = save_image(noisy, tmp_path / "rt.png")
    np.testing.assert_array_equal(to_uint8(load_image(out, min_side=1).pixels), ref)
    np.testing.assert_array_equal(to_uint8(decode_bytes(encode_image(noisy, "png"))), ref)


def test_jpeg_and_webp_encoding_options(tmp_path):
    px = bf.sample_rgb(64, 64).astype(np.float32) / 255
    with Image.open(io.BytesIO(encode_image(px, "jpeg", quality=95))) as im:
        assert im.layer[0][1:3] == (1, 1)  # luma not subsampled relative to chroma: 4:4:4
        assert "icc_profile" not in im.info
    with Image.open(io.BytesIO(encode_image(px, "jpg", quality=80))) as im:
        assert im.layer[0][1:3] == (2, 2)  # 4:2:0 below quality 90
    lossless = decode_bytes(encode_image(px, "webp", quality=100))
    np.testing.assert_array_equal(to_uint8(lossless), to_uint8(px))
    with pytest.raises(ValueError, match="png, jpeg, webp"):
        encode_image(px, "gif")


def test_save_never_overwrites(tmp_path):
    a = np.zeros((64, 64, 3), np.float32)
    b = np.ones((64, 64, 3), np.float32)
    first = save_image(a, tmp_path / "p.png")
    second = save_image(b, tmp_path / "p.png")
    third = save_image(b, tmp_path / "p.png")
    assert (first.name, second.name, third.name) == ("p.png", "p-2.png", "p-3.png")
    assert load_image(first).pixels.max() == 0.0 and load_image(second).pixels.min() == 1.0


def test_save_refuses_a_name_that_contradicts_the_format(tmp_path):
    with pytest.raises(ValueError, match="png"):
        save_image(np.zeros((8, 8, 3), np.float32), tmp_path / "x.png", format="jpeg")
    assert save_image(np.zeros((8, 8, 3)), tmp_path / "x.jpg", format="jpeg").name == "x.jpg"


def test_protected_name():
    src = Path("/photos/IMG_0042.JPG")
    assert protected_name(src, Path("/out"), "png") == Path("/out/IMG_0042-protected.png")
    assert protected_name(src, Path("/out"), "jpeg").name == "IMG_0042-protected.jpg"
    assert protected_name(src, Path("/out"), "webp").suffix == ".webp"


def test_failure_mid_write_leaves_no_partial_or_temp_file(tmp_path, monkeypatch):
    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", disk_full)
    with pytest.raises(OutputError, match="the disk is full") as info:
        save_image(np.zeros((64, 64, 3), np.float32), tmp_path / "out" / "p.png")
    assert info.value.path.name == "p.png"
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(("exc", "words"), [
    (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
    (OSError(errno.ENOSPC, "No space left on device"), "the disk is full"),
    (OSError(errno.EROFS, "Read-only file system"), "read-only"),
])
def test_refused_publish_is_output_error_and_cleans_up(tmp_path, monkeypatch, exc, words):
    def refuse(*args: object, **kwargs: object) -> None:
        raise exc

    monkeypatch.setattr(atomic.os, "link", refuse)
    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(OutputError, match=words):
        save_image(np.zeros((64, 64, 3), np.float32), tmp_path / "p.png")
    with pytest.raises(OutputError, match=words):
        atomic.atomic_write_text(tmp_path / "report.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_whole_file_or_keeps_the_old_one(tmp_path, monkeypatch):
    dest = tmp_path / "manifest.json"
    atomic.atomic_write_text(dest, "old")
    atomic.atomic_write_bytes(dest, b"new")
    assert dest.read_bytes() == b"new"

    def crash(*args: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OutputError, match="Input/output error"):
        atomic.atomic_write_bytes(dest, b"half")
    assert dest.read_bytes() == b"new" and sorted(tmp_path.iterdir()) == [dest]


def test_create_exclusive_without_hard_links_uses_exclusive_reservation(tmp_path, monkeypatch):
    def no_links(*args: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(atomic.os, "link", no_links)
    (tmp_path / "a.bin").write_bytes(b"keep me")
    out = atomic.create_exclusive(tmp_path / "a.bin", b"new data")
    assert out.name == "a-2.bin" and out.read_bytes() == b"new data"
    assert (tmp_path / "a.bin").read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-2.bin", "a.bin"]


def test_concurrent_writers_never_clobber_each_other(tmp_path):
    results: list[Path] = []
    lock = threading.Lock()

    def writer(k: int) -> None:
        for i in range(15):
            p = atomic.create_exclusive(tmp_path / "same.bin", f"{k}:{i}".encode())
            with lock:
                results.append(p)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 60
    contents = {p.read_bytes() for p in results}
    assert contents == {f"{k}:{i}".encode() for k in range(4) for i in range(15)}
    assert len(list(tmp_path.iterdir())) == 60  # no temp files left


def test_next_free_path(tmp_path):
    p = tmp_path / "x.png"
    assert atomic.next_free_path(p) == p
    p.write_bytes(b"1")
    (tmp_path / "x-2.png").write_bytes(b"2")
    assert atomic.next_free_path(p) == tmp_path / "x-3.png"


def test_avif_photos_are_read(tmp_path: Path) -> None:
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow was built without AVIF")
    rgb = np.zeros((80, 96, 3), np.uint8)
    rgb[:, :48] = (200, 60, 40)
    rgb[:, 48:] = (40, 90, 200)
    Image.fromarray(rgb).save(tmp_path / "p.avif", quality=95)
    loaded = load_image(tmp_path / "p.avif")
    assert loaded.format == "AVIF" and loaded.pixels.shape == (80, 96, 3)
    assert np.abs(loaded.pixels[40, 10] * 255 - (200, 60, 40)).max() < 12
    assert np.abs(loaded.pixels[40, 80] * 255 - (40, 90, 200)).max() < 12
