"""The batch list: photos grouped by album (their folder), with thumbnails and a status each."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from PySide6.QtCore import QObject, QRunnable, QSize, Qt, QThreadPool, Signal
from PySide6.QtGui import QBrush, QColor, QIcon, QImage, QImageReader, QPixmap, QResizeEvent
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTreeWidget, QTreeWidgetItem

from dladiff_app.core.albums import PICTURE_SUFFIXES
from dladiff_app.core.results import PhotoResult
from dladiff_app.core.score_words import model_list, still_recognising
from dladiff_app.gui.engine_thread import track_pool

IMAGE_SUFFIXES = PICTURE_SUFFIXES
THUMB = 48
_PATH_ROLE = Qt.ItemDataRole.UserRole + 1


class Status(str, Enum):
    QUEUED = "Not protected yet"  # before a run, and after a run stopped before it
    RUNNING = "Running"
    DONE = "Protected"  # every face model that measured a face reads another person
    # Shielded and written, but some face model still reads a face as the same person.
    RECOGNISED = "Changed, still recognised"
    # Finished, but no shield could change the photo (no face found): it is NOT protected.
    UNPROTECTED = "Not protected"
    FAILED = "Failed"
    SKIPPED = "Skipped"
    CANCELLED = "Cancelled"


STATUS_COLOURS = {
    Status.QUEUED: "#6b7280",
    Status.RUNNING: "#2563eb",
    Status.DONE: "#15803d",
    Status.RECOGNISED: "#c2410c",
    Status.UNPROTECTED: "#c2410c",
    Status.FAILED: "#b91c1c",
    Status.SKIPPED: "#b45309",
    Status.CANCELLED: "#6b7280",
}


# A photo the runner finished with a written result (what "Protect again" can redo).
FINISHED = (Status.DONE, Status.RECOGNISED, Status.UNPROTECTED, Status.SKIPPED)


@dataclass
class PhotoEntry:
    path: Path
    album: str
    status: Status = Status.QUEUED
    detail: str = ""
    percent: int | None = None
    result: PhotoResult | None = None
    pixels: int | None = None  # width x height as the file announces it

    @property
    def status_text(self) -> str:
        if self.status is Status.RUNNING and self.percent is not None:
            text = f"Running {self.percent}%"
        else:
            text = self.status.value
        if not self.detail:
            return text
        # "Changed, still recognised by SFace" reads as one phrase, not "...: by SFace".
        joint = " " if self.detail.startswith("by ") else ": "
        return f"{text}{joint}{self.detail}"

    @property
    def runnable(self) -> bool:
        """Should the next Protect include this photo?"""
        return self.status in (Status.QUEUED, Status.FAILED, Status.CANCELLED)


def run_counts(entries: Iterable[PhotoEntry]) -> str:
    """ "2 protected, 1 still recognised by a face model, 0 failed, 0 skipped": each photo
    counted once, by its status, so the numbers add up to the photos of the run."""
    entries = list(entries)

    def n(*statuses: Status) -> int:
        return sum(e.status in statuses for e in entries)

    parts = [f"{n(Status.DONE)} protected"]
    if recognised := n(Status.RECOGNISED):
        parts.append(f"{recognised} changed but still recognised by a face model")
    if unprotected := n(Status.UNPROTECTED):
        parts.append(f"{unprotected} NOT protected (no face found)")
    parts.append(f"{n(Status.FAILED)} failed")
    # Anything the run did not finish (cancelled, still queued) counts as skipped.
    parts.append(f"{len(entries) - n(Status.DONE, Status.RECOGNISED, Status.UNPROTECTED, Status.FAILED)} skipped")
    return ", ".join(parts)


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files stay as given (even non-images: they get a visible reason); folders contribute
    their image files, recursively, in name order."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*")
                              if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                              and not p.name.startswith(".")))
        else:
            out.append(path)
    return out


def photo_column_width(viewport: int) -> int:
    """Width of the photo column: 55% of the list, at least thumbnail + a readable name."""
    return max(THUMB + 140, int(viewport * 0.55))


class _ThumbSignals(QObject):
    loaded = Signal(str, QImage, int)
    failed = Signal(str, str)


class _ThumbJob(QRunnable):
    """Decodes a small thumbnail off the UI thread (QImage is thread-safe, QPixmap is not)."""

    def __init__(self, path: Path, signals: _ThumbSignals) -> None:
        super().__init__()
        self._path = path
        self._signals = signals

    def run(self) -> None:
        reader = QImageReader(str(self._path))
        reader.setAutoTransform(True)
        size = reader.size()
        pixels = size.width() * size.height() if size.isValid() else 0
        if size.isValid() and size.width() > 0 and size.height() > 0:
            reader.setScaledSize(size.scaled(QSize(THUMB * 2, THUMB * 2),
                                             Qt.AspectRatioMode.KeepAspectRatio))
        image = reader.read()
        if image.isNull():
            self._signals.failed.emit(str(self._path), reader.errorString())
        else:
            self._signals.loaded.emit(str(self._path), image, pixels)


class BatchList(QTreeWidget):
    """Two columns (photo, status); top-level rows are albums, their children photos."""

    changed = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)  # type: ignore[arg-type]
        self.setAccessibleName("Photos to protect")
        self.setColumnCount(2)
        self.setHeaderLabels(["Photo", "Status"])
        # The photo column keeps a fair share; a long status is elided (whole text in its
        # tooltip) instead of pushing the photo names down to "Pho".
        self.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        self.header().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.header().setStretchLastSection(True)
        self.header().setMinimumSectionSize(60)
        self.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.setIconSize(QSize(THUMB, THUMB))
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setStyleSheet("QTreeView::item { padding: 2px; }")
        self.setAlternatingRowColors(True)
        self._entries: dict[Path, PhotoEntry] = {}
        self._items: dict[Path, QTreeWidgetItem] = {}
        self._albums: dict[str, QTreeWidgetItem] = {}
        self._pool = track_pool(QThreadPool(self))
        self._pool.setObjectName("dladiff-thumbnails")
        self._pool.setMaxThreadCount(1)  # decoding competes with the engine for the CPU
        self._signals = _ThumbSignals(self)
        self._signals.loaded.connect(self._on_thumb)
        self._signals.failed.connect(self._on_thumb_failed)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self.setColumnWidth(0, photo_column_width(self.viewport().width()))

    # ------------------------------------------------------------------ content
    def add_paths(self, paths: Iterable[Path]) -> list[Path]:
        """Add files and folders; returns the photos newly listed (duplicates are ignored)."""
        added: list[Path] = []
        for path in expand_paths(Path(p) for p in paths):
            path = path.resolve() if path.exists() else path.absolute()
            if path in self._entries:
                continue
            entry = PhotoEntry(path=path, album=path.parent.name or str(path.parent))
            if not path.exists():
                entry.status, entry.detail = Status.SKIPPED, "file not found"
            elif path.suffix.lower() not in IMAGE_SUFFIXES:
                entry.status = Status.SKIPPED
                entry.detail = f"not a photo ({path.suffix or 'no extension'})"
            self._insert(entry)
            if entry.status is Status.QUEUED:
                self._pool.start(_ThumbJob(path, self._signals))
            added.append(path)
        if added:
            self.changed.emit()
        return added

    def _insert(self, entry: PhotoEntry) -> None:
        key = str(entry.path.parent)
        album = self._albums.get(key)
        if album is None:
            album = QTreeWidgetItem(self, [entry.album, ""])
            album.setFirstColumnSpanned(False)
            font = album.font(0)
            font.setBold(True)
            album.setFont(0, font)
            album.setToolTip(0, key)
            album.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
            self._albums[key] = album
            album.setExpanded(True)
        item = QTreeWidgetItem(album, [entry.path.name, ""])
        item.setData(0, _PATH_ROLE, str(entry.path))
        item.setToolTip(0, str(entry.path))
        self._entries[entry.path] = entry
        self._items[entry.path] = item
        album.setExpanded(True)
        self._refresh(entry.path)
        self._refresh_album(album)

    def entries(self) -> list[PhotoEntry]:
        return list(self._entries.values())

    def entry(self, path: Path) -> PhotoEntry:
        return self._entries[path]

    def runnable_entries(self) -> list[PhotoEntry]:
        return [e for e in self._entries.values() if e.runnable]

    def megapixels(self, entries: list[PhotoEntry]) -> float:
        """Mean size of ``entries`` in megapixels (12 until their headers have been read)."""
        known = [e.pixels for e in entries if e.pixels]
        return sum(known) / len(known) / 1e6 if known else 12.0

    def is_empty(self) -> bool:
        return not self._entries

    def selected_entries(self) -> list[PhotoEntry]:
        paths = [it.data(0, _PATH_ROLE) for it in self.selectedItems()]
        return [self._entries[Path(p)] for p in paths if p]

    def remove_selected(self) -> int:
        doomed = {Path(p) for it in self.selectedItems() if (p := it.data(0, _PATH_ROLE))}
        for it in self.selectedItems():  # selecting an album removes all its photos
            if it.parent() is None:
                children = (it.child(i) for i in range(it.childCount()))
                doomed.update(Path(c.data(0, _PATH_ROLE)) for c in children if c is not None)
        for path in doomed:
            self._remove(path)
        if doomed:
            self.changed.emit()
        return len(doomed)

    def _remove(self, path: Path) -> None:
        item = self._items.pop(path)
        self._entries.pop(path)
        album = item.parent()
        assert album is not None  # photos always sit under an album row
        album.removeChild(item)
        if album.childCount() == 0:
            self._albums.pop(str(path.parent), None)
            self.takeTopLevelItem(self.indexOfTopLevelItem(album))
        else:
            self._refresh_album(album)

    def clear_all(self) -> None:
        self._pool.clear()
        self.clear()
        self._entries.clear()
        self._items.clear()
        self._albums.clear()
        self.changed.emit()

    # ------------------------------------------------------------------ status
    def set_status(self, path: Path, status: Status, detail: str = "",
                   percent: int | None = None) -> None:
        entry = self._entries.get(path)
        if entry is None:
            return
        entry.status, entry.detail, entry.percent = status, detail, percent
        self._refresh(path)
        album = self._items[path].parent()
        if album is not None:
            self._refresh_album(album)

    def set_result(self, path: Path, result: PhotoResult, detail: str | None = None) -> None:
        entry = self._entries.get(path)
        if entry is None:
            return
        entry.result = result
        notes = ["; ".join(result.warnings) if detail is None else detail]
        status = Status.DONE
        if models := still_recognising(result):
            status = Status.RECOGNISED
            notes.insert(0, f"by {model_list(models)}")
        self.set_status(path, status, "; ".join(n for n in notes if n))

    def protect_again(self, entries: list[PhotoEntry]) -> int:
        """Make finished photos runnable again (their earlier files are kept: the runner writes
        a protection at other settings to a new file). Returns how many were reset."""
        count = 0
        for e in entries:
            if e.status in FINISHED and e.path.exists():
                e.result = None
                self.set_status(e.path, Status.QUEUED)
                count += 1
        if count:
            self.changed.emit()
        return count

    def select_path(self, path: Path) -> None:
        item = self._items.get(path)
        if item is not None:
            self.setCurrentItem(item)

    def _refresh(self, path: Path) -> None:
        entry, item = self._entries[path], self._items[path]
        item.setText(1, entry.status_text)
        item.setToolTip(1, entry.status_text)
        item.setForeground(1, QBrush(QColor(STATUS_COLOURS[entry.status])))

    def _refresh_album(self, album: QTreeWidgetItem) -> None:
        children = (album.child(i) for i in range(album.childCount()))
        photos = [self._entries[Path(c.data(0, _PATH_ROLE))] for c in children if c is not None]
        done = sum(e.status is Status.DONE for e in photos)
        recognised = sum(e.status is Status.RECOGNISED for e in photos)
        # Files that are not photos at all do not count towards the album's total.
        skipped = sum(e.status is Status.SKIPPED for e in photos)
        text = f"{done}/{len(photos) - skipped} protected"
        if recognised:
            text += f", {recognised} still recognised"
        album.setText(1, text + (f" ({skipped} skipped)" if skipped else ""))

    # ------------------------------------------------------------------ thumbnails
    def _on_thumb(self, path: str, image: QImage, pixels: int) -> None:
        item = self._items.get(Path(path))
        if Path(path) in self._entries and pixels > 0:
            self._entries[Path(path)].pixels = pixels
            self.changed.emit()
        if item is not None:
            item.setIcon(0, QIcon(QPixmap.fromImage(image)))

    def _on_thumb_failed(self, path: str, reason: str) -> None:
        p = Path(path)
        if p in self._entries and self._entries[p].status is Status.QUEUED:
            self.set_status(p, Status.SKIPPED, f"not a readable image ({reason.lower()})")
            self.changed.emit()

    def wait_for_thumbnails(self, msecs: int = -1) -> bool:
        return self._pool.waitForDone(msecs)

    def shutdown(self) -> None:
        self._pool.clear()
        self._pool.waitForDone()
