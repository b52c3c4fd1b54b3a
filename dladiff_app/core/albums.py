"""Turn what the user gave (files, folders) into albums: one person's photos, protected together.

Discovery never opens a file's pixels: it only decides *which* paths belong to the batch. A file
named explicitly is always taken (if it is not an image the image I/O layer refuses it with a
reason the user sees); inside folders only names that look like pictures are taken, so a
``notes.txt`` beside the photos is ignored instead of being reported as a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dladiff_app.core.errors import UnusableOutputError
from dladiff_app.core.jobs import AlbumMode
from dladiff_app.core.journal import JOURNAL_NAME

# Suffixes taken from folders. Unsupported picture formats (GIF, HEIC, ...) are included on
# purpose: the user then learns why they were not protected instead of silently losing them.
PICTURE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".tif", ".tiff", ".bmp",
    ".gif", ".heic", ".heif", ".avif", ".psd", ".ico", ".jp2", ".dng", ".cr2", ".nef", ".arw",
})


@dataclass(frozen=True)
class InputFile:
    """One file of the batch and the folder that defines its album (its parent folder)."""

    path: Path
    folder: Path


@dataclass(frozen=True)
class Album:
    """``name`` is unique within the job and is the album's sub-folder of the output folder."""

    name: str
    photos: tuple[Path, ...]
    # What the album stands for: its folder (per folder) or its photo (per photo), absolute.
    # The job journal remembers origin -> name, so a resume keeps every album's folder.
    origin: str = ""

    def output_dir(self, out_root: Path) -> Path:
        return out_root / self.name


@dataclass(frozen=True)
class Discovery:
    files: tuple[InputFile, ...]
    missing: tuple[Path, ...]   # inputs that do not exist (reported, not fatal)
    ignored: tuple[Path, ...]   # files in folders that are not pictures (reported as a notice)
    # Input folders that lie inside the output folder (never read: reported, not silently empty)
    inside_output: tuple[Path, ...] = ()
    # Folders that could not be listed (permission denied, ...), with the reason
    unreadable: tuple[tuple[Path, str], ...] = ()
    # Output folders of earlier DLADiff jobs met among the inputs: never read (their protected
    # copies would be protected again)
    job_folders: tuple[Path, ...] = ()
    # Input folders without pictures of their own but with sub-folders (read with ``recursive``)
    only_subfolders: tuple[Path, ...] = ()


def check_output_folder(out: Path, inputs: Iterable[Path]) -> None:
    """Refuse an output folder that cannot hold a job, before anything is created there:
    raises :class:`UnusableOutputError` when ``out`` is a file or is the folder of an input
    (the protected copies and the job's files would be mixed with the originals)."""
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise UnusableOutputError(
            f"The output folder {out} is a file, not a folder: choose a folder for the "
            "protected copies (nothing was changed).")
    where = out.resolve()
    for given in map(Path, inputs):
        try:
            folder = given if given.is_dir() else given.parent
            same = folder.resolve() == where
        except (OSError, RuntimeError):
            same = False
        if same:
            raise UnusableOutputError(
                f"The output folder {out} is the folder of the photos to protect: the protected "
                "copies and the job's own files would be mixed with your originals. Choose "
                "another output folder, outside the photos' folder (nothing was changed).")


def _is_job_folder(folder: Path) -> bool:
    """An earlier job's output folder, or one of its album folders."""
    try:
        return (folder / JOURNAL_NAME).is_file() or (folder.parent / JOURNAL_NAME).is_file()
    except OSError:
        return False


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def discover_inputs(inputs: Iterable[Path], *, recursive: bool = False,
                    exclude: Path | None = None) -> Discovery:
    """Expand ``inputs`` into files, in a stable order (sorted per folder, inputs in given order).

    ``exclude`` (the output folder) is never read as input, so protecting a folder into a
    sub-folder of itself does not protect the protected files on the next run; an input folder
    inside it is listed in ``inside_output`` (the caller says so) instead of being read. The
    output folders of other DLADiff jobs (they hold a job journal) are not read either
    (``job_folders``). Duplicates (the same file reached twice) are kept once.
    """
    files: list[InputFile] = []
    missing: list[Path] = []
    ignored: list[Path] = []
    inside_output: list[Path] = []
    unreadable: list[tuple[Path, str]] = []
    job_folders: list[Path] = []
    only_subfolders: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path, folder: Path) -> None:
        try:
            key = path.resolve()
        except (OSError, RuntimeError):  # a symlink loop: loading it names the problem
            key = path.absolute()
        if key not in seen:
            seen.add(key)
            files.append(InputFile(path, folder))

    for raw in inputs:
        path = Path(raw)
        try:
            is_dir = path.is_dir()
        except OSError:  # e.g. inside a folder we may not enter: loading it says why
            is_dir = False
        if is_dir:
            if exclude is not None and _inside(path, exclude):
                inside_output.append(path)
                continue
            before = len(files) + len(ignored)
            for folder, entries in _walk(path, recursive, unreadable, job_folders):
                if exclude is not None and _inside(folder, exclude):
                    continue
                for entry in entries:
                    if entry.suffix.lower() in PICTURE_SUFFIXES:
                        add(entry, folder)
                    else:
                        ignored.append(entry)
            if not recursive and len(files) + len(ignored) == before and _has_subfolders(path):
                only_subfolders.append(path)
        elif _exists(path):
            add(path, path.parent)
        else:
            missing.append(path)
    return Discovery(tuple(files), tuple(missing), tuple(ignored), tuple(inside_output),
                     tuple(unreadable), tuple(job_folders), tuple(only_subfolders))


def _has_subfolders(folder: Path) -> bool:
    try:
        return any(p.is_dir() for p in folder.iterdir() if not _is_hidden(p))
    except OSError:
        return False


def _exists(path: Path) -> bool:
    """Anything at ``path``, a dangling or looping link included (loading it says what)."""
    try:
        return path.exists() or path.is_symlink()
    except OSError:
        return True  # there is something, we may just not look at it


def _why(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "this folder cannot be read (permission denied): nothing in it was protected"
    return f"this folder cannot be read ({exc.strerror or exc}): nothing in it was protected"


def _walk(root: Path, recursive: bool, unreadable: list[tuple[Path, str]],
          job_folders: list[Path]) -> list[tuple[Path, list[Path]]]:
    """Folders under ``root`` (root first, then sorted), each with its sorted visible files.
    Folders that cannot be listed are added to ``unreadable`` with the reason (never a silent
    "0 photos"); earlier jobs' output folders are skipped with their sub-folders and added to
    ``job_folders``."""
    out: list[tuple[Path, list[Path]]] = []
    if _is_job_folder(root):
        job_folders.append(root)
        return out
    if recursive:
        def onerror(exc: OSError) -> None:
            unreadable.append((Path(exc.filename or root), _why(exc)))

        for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
            folder = Path(dirpath)
            if folder != root and _is_job_folder(folder):
                job_folders.append(folder)
                dirnames[:] = []
                continue
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            out.append((folder, sorted(folder / f for f in filenames if not f.startswith("."))))
    else:
        try:
            entries = sorted(p for p in root.iterdir() if not _is_hidden(p) and _is_file(p))
        except OSError as exc:
            unreadable.append((root, _why(exc)))
            entries = []
        out.append((root, entries))
    return [(folder, [p for p in entries if _is_file(p)]) for folder, entries in out]


def _is_file(path: Path) -> bool:
    """A regular file (following links). FIFOs, sockets and devices inside folders are not
    photos: they are left out like sub-folders are."""
    try:
        return path.is_file()
    except OSError:
        return False


def _safe_name(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_. " else "_" for c in text).strip(" .")
    return cleaned or "album"


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate.lower() in taken:
        candidate, n = f"{name}-{n}", n + 1
    taken.add(candidate.lower())
    return candidate


def _tail_names(folders: Sequence[Path], taken: set[str]) -> list[str]:
    """Names for folders whose own names collide (``2021/Camera``, ``2022/Camera``): the
    shortest tail of each path that tells them apart (``2021-Camera``, ``2022-Camera``), so a
    name depends on the folder itself, never on its position among the inputs."""
    names = [_safe_name(f.name) for f in folders]
    depth = 1
    while depth < max(len(f.parts) for f in folders):
        clash = {n.lower() for n in names if n.lower() in taken
                 or sum(m.lower() == n.lower() for m in names) > 1}
        if not clash:
            break
        depth += 1
        names = [_safe_name("-".join(f.parts[-depth:]).lstrip("/\\")) if n.lower() in clash
                 else n for f, n in zip(folders, names, strict=True)]
    return names


def group_albums(files: Sequence[InputFile], mode: AlbumMode = AlbumMode.PER_FOLDER,
                 known: Mapping[str, str] | None = None) -> list[Album]:
    """Group discovered files into albums.

    ``PER_FOLDER``: one album per folder the photos sit in, named after that folder (folders of
    the same name are told apart by their parent folders: ``2021-Camera``); ``SINGLE``: one album
    named ``album``; ``PER_PHOTO``: one album per photo, named by its stem. Names are made
    file-system safe and unique (``name``, ``name-2``, ...), case-insensitively so they do not
    collide on macOS/Windows. ``known`` (album origin -> name, from the job journal) keeps the
    names an earlier run of the job gave, whatever was added to the inputs since.
    """
    known = known or {}
    taken: set[str] = {n.lower() for n in known.values()}
    if mode is AlbumMode.SINGLE:
        return [Album("album", tuple(f.path for f in files))] if files else []
    if mode is AlbumMode.PER_PHOTO:
        albums = []
        for f in files:
            origin = str(f.path.absolute())
            name = known.get(origin) or _unique(_safe_name(f.path.stem), taken)
            albums.append(Album(name, (f.path,), origin))
        return albums
    by_folder: dict[Path, list[Path]] = {}
    for f in files:
        by_folder.setdefault(f.folder.resolve(), []).append(f.path)
    new = [folder for folder in by_folder if str(folder) not in known]
    fresh = dict(zip(new, _tail_names(new, taken), strict=True)) if new else {}
    albums = []
    for folder, paths in by_folder.items():
        name = known.get(str(folder)) or _unique(fresh[folder], taken)
        albums.append(Album(name, tuple(paths), str(folder)))
    return albums
