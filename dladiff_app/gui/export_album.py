"""Export an already-protected album into another folder, re-encoded with the export options.

The pixels are the protected file as written (the perturbation is not recomputed); encoding goes
through ``core.imageio.save_image``, the same code the CLI and the engine use. A JPEG (or WebP)
export loses part of the perturbation, so the album's report is not copied: every exported file
is measured again against its clean photo (``ProtectService.measure``: identity scores of every
face, also after sharing, PSNR, SSIM) and a new manifest.json and report.html are written next to
the exported files from those figures. Nothing existing is overwritten (``-2`` names).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import DladiffError, OutputError
from dladiff_app.core.imageio import load_image, protected_name, save_image
from dladiff_app.core.jobs import ExportOptions
from dladiff_app.core.results import PhotoResult
from dladiff_app.gui.wording import counted

if TYPE_CHECKING:
    from dladiff_app.gui.export_dialog import ExportDialog
    from dladiff_app.gui.main_window import MainWindow

REPORT_FILES = ("manifest.json", "report.html")
# source photo, exported file -> the figures measured on the exported file
MeasureFn = Callable[[Path, Path], PhotoResult]


@dataclass(frozen=True)
class ExportItem:
    source: Path   # the clean photo (for its metadata)
    output: Path   # the protected file the job wrote


def export_protected(items: list[ExportItem], dest: Path, options: ExportOptions,
                     cancel: CancelToken, measure: MeasureFn | None = None) -> list[Path]:
    """Write each protected photo to ``dest/<album>/``; returns the files written.

    ``<album>`` is the name of the folder the job wrote the output into, so albums stay apart.
    With ``options.write_report`` and ``measure``, each album gets a manifest and report
    measured on the exported files. Raises ``OutputError`` (folder not writable) or an
    ``ImageError`` naming the bad file.
    """
    written: list[Path] = []
    albums: dict[Path, list[tuple[ExportItem, Path]]] = {}
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
        out = save_image(pixels, target, format=options.format.value, quality=options.quality,
                         exif=exif)
        written.append(out)
        albums.setdefault(item.output.parent, []).append((item, out))
    if options.write_report and measure is not None:
        for folder, pairs in sorted(albums.items()):
            written.extend(write_export_report(folder, dest / folder.name, pairs, options,
                                               measure, cancel))
    return written


def _remeasured(record: dict[str, Any], result: PhotoResult, sha256: str) -> dict[str, Any]:
    new = dict(record)
    new.update(output=result.output, sha256=sha256, width=result.width, height=result.height,
               scores=[s.to_dict() for s in result.scores],
               scores_after_sharing=[s.to_dict() for s in result.scores_after_sharing],
               per_face=[f.to_dict() for f in result.per_face],
               psnr=result.psnr, ssim=result.ssim, linf=result.linf,
               face_ssim=result.face_ssim, face_de_mean=result.face_de_mean,
               face_de_p95=result.face_de_p95)
    return new


def write_export_report(folder: Path, target: Path, pairs: list[tuple[ExportItem, Path]],
                        options: ExportOptions, measure: MeasureFn,
                        cancel: CancelToken) -> list[Path]:
    """manifest.json + report.html for exported copies of album ``folder``, from figures
    measured on the exported files; the protection's settings, device and models come from the
    album's own manifest (no manifest there: no report, nothing to describe the run)."""
    from dladiff_app.core.atomic import atomic_write_text, next_free_path
    from dladiff_app.core.journal import sha256_file
    from dladiff_app.core.manifest import build_manifest, manifest_text
    from dladiff_app.core.report_html import render_report, thumbnail_jpeg

    source_manifest = folder / "manifest.json"
    if not source_manifest.is_file():
        return []
    try:
        doc = json.loads(source_manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    records = {str(Path(r["source"]).resolve()): r for r in doc.get("photos", [])}
    photos, thumbs = [], {}
    for item, out in pairs:
        cancel.check()
        record = records.get(str(Path(item.source).resolve()))
        if record is None:
            continue
        result = measure(item.source, out)
        photos.append(_remeasured(record, result, sha256_file(out)))
        with contextlib.suppress(DladiffError):  # a moved original: listed without pictures
            thumbs[record["source"]] = (thumbnail_jpeg(load_image(item.source).pixels),
                                        thumbnail_jpeg(load_image(out).pixels))
    job = dict(doc["job"])
    job["export"] = {"format": options.format.value, "quality": options.quality,
                     "keep_metadata": options.keep_metadata,
                     "exported_from": str(folder), "measured_on": "the exported files"}
    new = build_manifest(album=doc["album"], job=job, device=doc["device"],
                         models=doc["models"], photos=photos, failed=doc.get("failed", []))
    manifest_path = next_free_path(target / "manifest.json")
    atomic_write_text(manifest_path, manifest_text(new))
    report_path = next_free_path(target / "report.html")
    atomic_write_text(report_path, render_report(new, thumbs))
    return [manifest_path, report_path]


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
        reports = [p for p in paths if p.suffix in (".json", ".html")]
        count = len(paths) - len(reports)
        window.last_export = paths
        measured = " Its report was measured on the exported files." if reports else ""
        window.notes.notify(f"Exported {counted(count, 'photo')} to {dest}.{measured}")

    measure = getattr(window.services.protect, "measure", None)
    window.engine.submit(lambda: export_protected(items, dest, options, token, measure), done,
                         lambda msg: window.notes.error(f"Export failed: {msg}"), cancel=token)
