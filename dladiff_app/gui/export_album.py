"""Export an already-protected album into another folder, re-encoded with the export options.

The pixels are the protected file as written (the perturbation is not recomputed); encoding goes
through ``core.imageio.save_image``, the same code the CLI and the engine use. The album's report
(manifest.json, report.html) describes the protection run, so it is copied along unchanged.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import OutputError
from dladiff_app.core.imageio import load_image, protected_name, save_image
from dladiff_app.core.jobs import ExportOptions
from dladiff_app.gui.wording import counted

if TYPE_CHECKING:
    from dladiff_app.gui.export_dialog import ExportDialog
    from dladiff_app.gui.main_window import MainWindow

REPORT_FILES = ("manifest.json", "report.html")


@dataclass(frozen=True)
class ExportItem:
    source: Path   # the clean photo (for its metadata)
    output: Path   # the protected file the job wrote


def export_protected(items: list[ExportItem], dest: Path, options: ExportOptions,
                     cancel: CancelToken) -> list[Path]:
    """Write each protected photo to ``dest/<album>/``; returns the files written.

    ``<album>`` is the name of the folder the job wrote the output into, so albums stay apart.
    Raises ``OutputError`` (folder not writable) or an ``ImageError`` naming the bad file.
    """
    written: list[Path] = []
    albums: set[Path] = set()
    for item in items:
        cancel.check()
        album_dir = dest / item.output.parent.name
        try:
            album_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(album_dir, exc.strerror or str(exc)) from None
        pixels = load_image(item.output).pixels
        exif = load_image(item.source).exif_kept if options.keep_metadata else None
        target = protected_name(item.source, album_dir, options.format.value)
        written.append(save_image(pixels, target, format=options.format.value,
                                  quality=options.quality, exif=exif))
        albums.add(item.output.parent)
    if options.write_report:
        for folder in sorted(albums):
            for name in REPORT_FILES:
                if (folder / name).is_file():
                    target = dest / folder.name / name
                    shutil.copyfile(folder / name, target)
                    written.append(target)
    return written


def start_export(window: MainWindow) -> None:
    """Ask where and how, then export on the engine thread with a notification at the end."""
    items = export_items(window)
    if not items:
        window.notes.notify("Protect some photos first; then they can be exported.")
        return
    dialog = export_dialog(window, len(items))
    if not dialog.exec():
        return
    run_export(window, items, dialog.folder(), dialog.options())


def export_items(window: MainWindow) -> list[ExportItem]:
    return [ExportItem(e.path, Path(e.result.output)) for e in window.batch.entries()
            if e.result is not None]


def export_dialog(window: MainWindow, count: int) -> ExportDialog:
    """The export question (not yet shown), for ``count`` protected photos."""
    from dladiff_app.gui.export_dialog import ExportDialog

    return ExportDialog(None, window.export_options, title="Export protected photos",
                        intro=f"Copy {counted(count, 'protected photo')} into another folder, "
                              "re-encoded in the format you choose.", action="Export",
                        parent=window)


def run_export(window: MainWindow, items: list[ExportItem], dest: Path,
               options: ExportOptions) -> None:
    token = CancelToken()

    def done(result: object) -> None:
        paths = [Path(p) for p in result]  # type: ignore[attr-defined]
        count = sum(1 for p in paths if p.name not in REPORT_FILES)
        window.last_export = paths
        window.notes.notify(f"Exported {counted(count, 'photo')} to {dest}.")

    window.engine.submit(lambda: export_protected(items, dest, options, token), done,
                         lambda msg: window.notes.error(f"Export failed: {msg}"), cancel=token)
