"""Write an album's manifest.json and report.html from what the journal recorded.

Built from the journal (not from memory) so that a resumed job's report also lists the photos an
earlier, interrupted run protected. Both files are written atomically; they are the job's own
files, so a resumed run refreshes them in place, while a name some user file already holds is
never taken (the first free ``manifest-2.json`` etc. is used instead and remembered).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from dladiff_app.core.albums import Album
from dladiff_app.core.atomic import atomic_write_text, next_free_path
from dladiff_app.core.errors import DladiffError
from dladiff_app.core.imageio import load_image
from dladiff_app.core.jobs import ProtectJob
from dladiff_app.core.journal import Journal
from dladiff_app.core.manifest import build_manifest, manifest_text
from dladiff_app.core.report_html import render_report, thumbnail_jpeg


class ReportedKit(Protocol):
    """What a report says about the engine that ran the job (the runner's ``EngineKit``)."""

    @property
    def device_kind(self) -> str: ...
    @property
    def device_name(self) -> str: ...
    @property
    def models(self) -> dict[str, Any]: ...


def _thumbs(source: str, output: str) -> tuple[bytes, bytes] | None:
    try:
        return (thumbnail_jpeg(load_image(Path(source)).pixels),
                thumbnail_jpeg(load_image(Path(output)).pixels))
    except DladiffError:
        return None  # the original was moved away since: the report lists it without pictures


def write_album_reports(journal: Journal, album: Album, out: Path, job: ProtectJob,
                        kit: ReportedKit) -> tuple[Path, Path] | None:
    """Returns (manifest path, report path), or None when the album has nothing to report."""
    done = [e for e in journal.done_in_album(album.name) if e.result]
    failed = journal.failed_in_album(album.name)
    unprotected = journal.unprotected_in_album(album.name)
    if not done and not failed and not unprotected:
        return None
    s = job.settings
    doc = build_manifest(
        album=album.name,
        job={"preset": s.preset, "eps": s.eps, "eps_ft": s.finetune_eps, "layers": s.layers.value,
             "settings": s.to_dict(),
             "export": {"format": job.export.format.value, "quality": job.export.quality,
                        "keep_metadata": job.export.keep_metadata}},
        device={"kind": kit.device_kind, "name": kit.device_name},
        models=kit.models,
        # The journal's source is absolute (a result of an older version may hold the path
        # as typed, relative to where that run started).
        photos=[{**e.result, "source": e.source, "output": e.output or e.result.get("output", "")}
                for e in done if e.result is not None],
        failed=[{"source": e.source, "reason": e.reason or "unknown reason"} for e in failed],
        unprotected=[{"source": e.source, "reason": e.reason or "no shield could change it",
                      "output": e.output} for e in unprotected])
    folder = album.output_dir(out)
    known = journal.albums.get(album.name, {})
    manifest_path = Path(known["manifest"]) if "manifest" in known else next_free_path(
        folder / "manifest.json")
    report_path = Path(known["report"]) if "report" in known else next_free_path(
        folder / "report.html")
    if "manifest" not in known:
        journal.set_album(album.name, manifest=str(manifest_path), report=str(report_path))
    atomic_write_text(manifest_path, manifest_text(doc))
    thumbs = {}
    for e in done:
        pair = _thumbs(e.source, e.output or "")
        if pair is not None:
            thumbs[e.output or e.source] = pair
    atomic_write_text(report_path, render_report(doc, thumbs))
    return manifest_path, report_path
