"""Zip packs are extracted safely: malicious archives are refused with nothing written."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from dladiff_app.core.errors import ModelIntegrityError
from dladiff_app.engine.models.extract import safe_extract_zip

LIMITS = {"max_member_bytes": 1 << 20, "max_total_bytes": 4 << 20}


def _zip(path: Path, members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def _symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _everything(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_extracts_pack_and_strips_wrapping_folder(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "antelopev2.zip", [("antelopev2/glintr100.onnx", b"rec"),
                                                  ("antelopev2/scrfd_10g_bnkps.onnx", b"det")])
    dest = tmp_path / "models" / "antelopev2"
    files = safe_extract_zip(archive, dest, **LIMITS)
    assert sorted(p.name for p in files) == ["glintr100.onnx", "scrfd_10g_bnkps.onnx"]
    assert (dest / "glintr100.onnx").read_bytes() == b"rec"
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["antelopev2"]  # no temp left


def test_flat_pack_is_kept_flat(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "buffalo_l.zip", [("det_10g.onnx", b"d"), ("w600k_r50.onnx", b"r")])
    safe_extract_zip(archive, tmp_path / "out", **LIMITS)
    assert (tmp_path / "out" / "w600k_r50.onnx").read_bytes() == b"r"


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        ("/dladiff_evil.txt", "absolute path"),
        ("../evil.txt", "'..'"),
        ("pack/../../evil.txt", "'..'"),
        ("..\\evil.txt", "'..'"),
        ("C:/evil.txt", "drive letter"),
        (_symlink_info("pack/link"), "symbolic link"),
    ],
)
def test_malicious_members_are_refused(tmp_path: Path, member: str | zipfile.ZipInfo,
                                       reason: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = _zip(tmp_path / "evil.zip", [("pack/good.onnx", b"ok"), (member, b"/etc/passwd")])
    before = _everything(tmp_path)
    with pytest.raises(ModelIntegrityError, match=reason):
        safe_extract_zip(archive, work / "models" / "pack", **LIMITS)
    assert _everything(tmp_path) == before
    assert not Path("/dladiff_evil.txt").exists()


def test_oversized_member_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "big.zip", [("big.onnx", b"\0" * ((1 << 20) + 1))])
    with pytest.raises(ModelIntegrityError, match="exceeds the limit"):
        safe_extract_zip(archive, tmp_path / "out", **LIMITS)
    assert not (tmp_path / "out").exists()


def test_total_limit_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "many.zip", [(f"f{i}.onnx", b"\0" * (1 << 20)) for i in range(5)])
    with pytest.raises(ModelIntegrityError, match="more than the limit"):
        safe_extract_zip(archive, tmp_path / "out", **LIMITS)
    assert not (tmp_path / "out").exists()


def test_lying_header_is_caught_while_copying(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "liar.zip", [("x.onnx", b"\0" * 5000)])
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("x.onnx")
    # Shrink the declared size in both headers so the pre-check passes.
    data = bytearray(archive.read_bytes())
    declared = (5000).to_bytes(4, "little")
    assert data.count(declared) == 2
    data = data.replace(declared, (10).to_bytes(4, "little"))
    archive.write_bytes(bytes(data))
    assert info.file_size == 5000
    with pytest.raises(ModelIntegrityError, match="liar.zip.*x.onnx"):
        safe_extract_zip(archive, tmp_path / "out", max_member_bytes=100, max_total_bytes=100)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["liar.zip"]


def test_not_a_zip(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(ModelIntegrityError, match="not a readable zip"):
        safe_extract_zip(bad, tmp_path / "out", **LIMITS)


def test_duplicate_member_names_are_refused(tmp_path: Path) -> None:
    """A zip may hold two members with one name (zipfile warns and writes both): extracting
    used to end in an unhandled FileExistsError."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile's "Duplicate name" warning
        archive = _zip(tmp_path / "pack.zip", [("pack/w600k_r50.onnx", b"one"),
                                               ("pack/W600K_R50.onnx", b"two"),
                                               ("pack/w600k_r50.onnx", b"three")])
    dest = tmp_path / "models" / "pack"
    with pytest.raises(ModelIntegrityError, match="two files named"):
        safe_extract_zip(archive, dest, **LIMITS)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


@pytest.mark.parametrize("order", ["file first", "folder first"])
def test_a_file_that_is_also_a_folder_is_refused(tmp_path: Path, order: str) -> None:
    members = [("pack/a", b"file"), ("pack/a/b.onnx", b"model")]
    archive = _zip(tmp_path / "pack.zip", members if order == "file first" else members[::-1])
    with pytest.raises(ModelIntegrityError, match="both a file and the folder"):
        safe_extract_zip(archive, tmp_path / "models" / "pack", **LIMITS)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
    # An explicit folder entry for a folder that files also sit in is fine.
    fine = _zip(tmp_path / "fine.zip", [("pack/a/", b""), ("pack/a/b.onnx", b"model"),
                                        ("pack/c.onnx", b"x")])
    assert len(safe_extract_zip(fine, tmp_path / "models" / "fine", **LIMITS)) == 2
