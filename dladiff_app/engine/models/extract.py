"""Safe zip extraction for downloaded model packs (zip-slip, links and zip bombs refused).

Every member name is checked before anything is written; files are extracted into a temporary
folder next to the destination, with the byte count enforced while copying (the sizes in a zip
header can lie), and the folder is renamed into place only when all members were written.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from dladiff_app.core.errors import ModelIntegrityError

_COPY_CHUNK = 1 << 20


def _refuse(zip_path: Path, member: str, reason: str) -> ModelIntegrityError:
    return ModelIntegrityError(
        f"{zip_path.name}: refused to extract {member!r}: {reason}. The archive is unsafe and "
        "was not used."
    )


def _safe_parts(zip_path: Path, info: zipfile.ZipInfo) -> tuple[str, ...]:
    name = info.filename
    if "\x00" in name:
        raise _refuse(zip_path, name, "the name contains a NUL byte")
    normalised = name.replace("\\", "/")
    if normalised.startswith("/"):
        raise _refuse(zip_path, name, "absolute path")
    if len(normalised) >= 2 and normalised[1] == ":":
        raise _refuse(zip_path, name, "drive letter in the path")
    parts = tuple(p for p in PurePosixPath(normalised).parts if p not in ("", "."))
    if any(p == ".." for p in parts):
        raise _refuse(zip_path, name, "'..' in the path")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise _refuse(zip_path, name, "symbolic link")
    # Archives written without Unix file-type bits (S_IFMT == 0) hold plain files.
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise _refuse(zip_path, name, "not a regular file")
    return parts


def _strip_common_folder(members: list[tuple[zipfile.ZipInfo, tuple[str, ...]]]
                         ) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    # Some packs (antelopev2.zip) wrap their files in a folder named like the pack.
    files = [parts for info, parts in members if not info.is_dir()]
    tops = {parts[0] for parts in files}
    if len(tops) != 1 or any(len(parts) < 2 for parts in files):
        return members
    return [(info, parts[1:]) for info, parts in members if len(parts) > 1]


def _refuse_duplicates(zip_path: Path,
                       members: list[tuple[zipfile.ZipInfo, tuple[str, ...]]]) -> None:
    """Two members with one name (case-insensitively, as macOS and Windows see it): which one
    is the model is ambiguous, and the second would silently replace the first. A file that is
    also a folder of another member (``pack/a`` and ``pack/a/b.onnx``) cannot be extracted."""
    seen: dict[str, str] = {}
    folders: dict[str, str] = {}
    for info, parts in members:
        for depth in range(1, len(parts) if not info.is_dir() else len(parts) + 1):
            folders.setdefault("/".join(parts[:depth]).lower(), info.filename)
        if info.is_dir():
            continue
        key = "/".join(parts).lower()
        if key in seen:
            raise _refuse(zip_path, info.filename,
                          f"the archive holds two files named {seen[key]!r}; it was not used")
        seen[key] = "/".join(parts)
    for key, name in seen.items():
        if key in folders:
            raise _refuse(zip_path, name, f"it is both a file and the folder of "
                                          f"{folders[key]!r}")


def safe_extract_zip(
    zip_path: Path,
    dest_dir: Path,
    *,
    max_member_bytes: int,
    max_total_bytes: int,
    strip_single_folder: bool = True,
) -> list[Path]:
    """Extract ``zip_path`` into ``dest_dir`` (replacing it) and return the extracted files.

    Refuses absolute paths, ``..``, drive letters, symlinks and other special members, members
    larger than ``max_member_bytes`` and archives larger than ``max_total_bytes`` (uncompressed),
    raising :class:`ModelIntegrityError` with nothing written to ``dest_dir``. With
    ``strip_single_folder`` a single top-level folder wrapping every file is removed.
    """
    zip_path = Path(zip_path)
    dest_dir = Path(dest_dir)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelIntegrityError(f"{zip_path.name}: not a readable zip archive ({exc}).") from exc
    with archive:
        members = [(info, _safe_parts(zip_path, info)) for info in archive.infolist()]
        members = [(info, parts) for info, parts in members if parts]
        total = 0
        for info, _parts in members:
            if info.file_size > max_member_bytes:
                raise _refuse(zip_path, info.filename,
                              f"{info.file_size} bytes exceeds the limit of {max_member_bytes}")
            total += info.file_size
        if total > max_total_bytes:
            raise ModelIntegrityError(
                f"{zip_path.name}: the archive expands to {total} bytes, more than the limit of "
                f"{max_total_bytes}; it was not used."
            )
        if strip_single_folder:
            members = _strip_common_folder(members)
        _refuse_duplicates(zip_path, members)

        dest_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", dir=dest_dir.parent))
        written: list[Path] = []
        try:
            root = staging.resolve()
            budget = max_total_bytes
            for info, parts in members:
                target = staging.joinpath(*parts)
                if not target.resolve().is_relative_to(root):
                    raise _refuse(zip_path, info.filename, "it resolves outside the folder")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                budget = _copy_member(archive, info, target, max_member_bytes, budget, zip_path)
                written.append(dest_dir.joinpath(*parts))
            if dest_dir.exists():
                shutil.rmtree(dest_dir)
            os.replace(staging, dest_dir)
        except OSError as exc:  # e.g. a name this file system cannot hold
            shutil.rmtree(staging, ignore_errors=True)
            raise ModelIntegrityError(f"{zip_path.name}: could not be extracted ({exc}); it was "
                                      "not used.") from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return written


def _copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path,
                 member_limit: int, budget: int, zip_path: Path) -> int:
    written = 0
    try:
        with archive.open(info) as src, open(target, "xb") as out:
            while chunk := src.read(_COPY_CHUNK):
                written += len(chunk)
                if written > member_limit or written > budget:
                    raise _refuse(zip_path, info.filename, "it expands beyond the size limit")
                out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # bad CRC, corrupt/cut stream
        raise ModelIntegrityError(
            f"{zip_path.name}: member {info.filename!r} is corrupt ({exc}); the archive was not "
            "used. Download it again."
        ) from exc
    return budget - written
