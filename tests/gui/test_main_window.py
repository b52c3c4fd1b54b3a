"""Drive the real main window with fake engine services (offscreen)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import QAbstractButton

from dladiff_app.core.jobs import ExportOptions, OutputFormat
from dladiff_app.core.presets import Layers
from dladiff_app.gui.batch_list import Status

pytestmark = pytest.mark.gui


def drop(window, paths: list[Path]) -> None:  # type: ignore[no-untyped-def]
    """Simulate a file-manager drop: the enter event must be accepted, then the drop handled.
    (QApplication does not deliver a synthetic drop without a platform drag in progress, so the
    handlers are called the way Qt would call them.)"""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    enter = QDragEnterEvent(QPointF(20, 20), Qt.DropAction.CopyAction, mime,
                            Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    window.dragEnterEvent(enter)
    assert enter.isAccepted() and window.acceptDrops()
    event = QDropEvent(QPointF(20, 20), Qt.DropAction.CopyAction, mime,
                       Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    window.dropEvent(event)
    assert event.isAccepted()


def wait_idle(qtbot, window, timeout: int = 10_000) -> None:  # type: ignore[no-untyped-def]
    qtbot.waitUntil(lambda: not window.engine.busy, timeout=timeout)


def test_drop_fills_the_list_by_album(qtbot, make_window, photos, fake_protect) -> None:  # type: ignore[no-untyped-def]
    fake_protect.face_counts = {"a1.png": 4, "b1.png": 0}  # a group photo, a photo without a face
    window = make_window()
    assert window.list_stack.currentIndex() == 0
    assert window.empty_hint.text() == "Drop photos or folders here"
    assert not window.protect_button.isEnabled()
    drop(window, [photos[0].parent.parent])  # the folder holding both albums
    assert window.list_stack.currentIndex() == 1
    entries = window.batch.entries()
    assert sorted(e.path.name for e in entries) == ["a1.png", "a2.png", "b1.png"]
    assert sorted({e.album for e in entries}) == ["alice", "bob"]
    assert window.batch.topLevelItemCount() == 2
    assert all(e.status is Status.QUEUED for e in entries)
    assert window.protect_button.isEnabled()
    window.batch.wait_for_thumbnails()
    qtbot.waitUntil(lambda: all(e.pixels == 72 * 96 for e in window.batch.entries()))
    # The estimate comes from the service, on the engine thread, with the measured size and
    # the faces the engine's detector counted (per face, not per photo: 4 + 1 + 0).
    expected = 5 * window.strength.settings().layer2_steps * 0.5 * (72 * 96 / 1e6)
    qtbot.waitUntil(lambda: "for 3 photos (5 faces) on Fake CPU"
                    in window.strength.estimate.text())
    assert sorted(fake_protect.counted) == ["a1.png", "a2.png", "b1.png"]  # counted once each
    assert window.strength.estimate.text().startswith("Estimated time: about ")
    assert f"{max(1, round(expected))} s" in window.strength.estimate.text()


def test_protect_runs_to_done_with_progress(qtbot, make_window, photos, fake_protect) -> None:  # type: ignore[no-untyped-def]
    window = make_window()
    window.add_paths(photos)
    seen: list[int] = []
    window.batch_progress.valueChanged.connect(seen.append)
    qtbot.mouseClick(window.protect_button, Qt.MouseButton.LeftButton)
    assert window.engine.job_running and window.cancel_button.isEnabled()
    wait_idle(qtbot, window)
    assert fake_protect.threads == ["dladiff-engine"] or fake_protect.threads[0] != "MainThread"
    assert all(e.status is Status.DONE for e in window.batch.entries())
    assert window.last_summary is not None and window.last_summary.done == 3
    assert window.batch_progress.value() == 1000
    assert len(seen) > 3 and seen == sorted(seen)
    for entry in window.batch.entries():
        assert entry.result is not None and Path(entry.result.output).is_file()
    assert "3 protected" in window.progress_label.text()
    assert not window.protect_button.isEnabled()  # nothing left to do
    qtbot.waitUntil(lambda: "nothing left to protect" in window.strength.estimate.text())
    assert window.export_action.isEnabled()


def test_cancel_mid_run_keeps_finished_photos(qtbot, make_window, photos, fake_protect) -> None:  # type: ignore[no-untyped-def]
    fake_protect.slow_from_photo = 1
    fake_protect.step_seconds = 0.01
    window = make_window()
    window.add_paths(photos)
    window.protect()
    first = window.batch.entry(photos[0].resolve())
    qtbot.waitUntil(lambda: first.status is Status.DONE, timeout=10_000)
    qtbot.waitUntil(lambda: window.batch.entry(photos[1].resolve()).status is Status.RUNNING)
    clicked = time.monotonic()
    qtbot.keyClick(window, Qt.Key.Key_Escape)
    wait_idle(qtbot, window)
    # The engine saw the token at its next step, well within a few step lengths.
    assert fake_protect.cancel_seen_at is not None
    assert fake_protect.cancel_seen_at - clicked < 0.5
    assert window.last_summary is not None and window.last_summary.cancelled
    assert first.status is Status.DONE and Path(first.result.output).is_file()
    second = window.batch.entry(photos[1].resolve())
    assert second.status is Status.CANCELLED and second.result is None
    assert "Cancelled. 1 photo was protected" in window.progress_label.text()
    assert window.protect_button.isEnabled()  # the rest can be protected later


def test_bad_files_show_their_reason(qtbot, make_window, photos, tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    broken = tmp_path / "in" / "alice" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    window = make_window()
    drop(window, [text, broken, photos[0]])
    skipped = window.batch.entry(text.resolve())
    assert skipped.status is Status.SKIPPED and "not a photo (.txt)" in skipped.status_text
    assert any("notes.txt" in t for t in window.notes.visible_texts())
    window.batch.wait_for_thumbnails()
    bad = window.batch.entry(broken.resolve())
    qtbot.waitUntil(lambda: bad.status is Status.SKIPPED)
    assert "not a readable image" in bad.detail
    # A file the engine refuses shows the engine's reason.
    window.batch.set_status(broken.resolve(), Status.QUEUED)
    window.protect()
    wait_idle(qtbot, window)
    assert bad.status is Status.FAILED and "broken.jpg: not a readable image" in bad.detail
    assert any(t.startswith("broken.jpg: not a readable image") for t in window.notes.visible_texts())
    assert window.batch.entry(photos[0].resolve()).status is Status.DONE


def test_viewer_shows_the_reported_scores(qtbot, make_window, photos) -> None:  # type: ignore[no-untyped-def]
    window = make_window()
    window.add_paths(photos[:1])
    window.protect()
    wait_idle(qtbot, window)
    window.batch.select_path(photos[0].resolve())
    window.show_selected_in_viewer()
    assert window.tabs.currentWidget() is window.viewer
    texts = [b.text() for b in window.viewer.badges]
    assert any("ArcFace (buffalo_l): similarity 0.123" in t and "different person" in t
               and "from 0.30" in t for t in texts)
    assert any("dlib face recognition: distance 0.732" in t and "below 0.60" in t for t in texts)
    assert any(t.startswith("After JPEG/resize: ArcFace (buffalo_l): similarity 0.247")
               for t in texts)
    # Plain words up front; the engineering figures one click away.
    assert "1 face found" in window.viewer.quality.text()
    assert "PSNR" not in window.viewer.quality.text()
    assert not window.viewer.figures.isVisibleTo(window)
    window.viewer.figures_button.click()
    assert window.viewer.figures.isVisibleTo(window)
    assert "PSNR 41.25 dB" in window.viewer.figures.text()
    canvas = window.viewer.canvas
    assert canvas.before is not None and canvas.after is not None
    assert (canvas.after.width(), canvas.after.height()) == (96, 72)
    # Difference map: the fake wrote the same pixels, so the amplified map is black.
    window.viewer.diff_toggle.setChecked(True)
    assert canvas.after.pixelColor(10, 10).red() == 0
    # Divider drags, zoom is shared by both halves (one canvas).
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=QPoint(int(canvas.divider_x()), 50))
    qtbot.mouseMove(canvas, QPoint(canvas.width() // 4, 50))
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=QPoint(canvas.width() // 4, 50))
    assert canvas.divider == pytest.approx(0.25, abs=0.02)


def test_export_writes_the_files(qtbot, make_window, photos, tmp_path) -> None:  # type: ignore[no-untyped-def]
    window = make_window()
    window.set_output(tmp_path / "jpeg_out", ExportOptions(format=OutputFormat.JPEG, quality=80))
    window.add_paths(photos)
    window.protect()
    wait_idle(qtbot, window)
    job = window.services.protect.jobs[-1]
    assert job.export.format is OutputFormat.JPEG and job.output_dir == tmp_path / "jpeg_out"
    # Re-export the protected album as PNG into another folder (core.imageio on the engine thread).
    from dladiff_app.gui.export_album import ExportItem, run_export

    items = [ExportItem(e.path, Path(e.result.output)) for e in window.batch.entries()]
    run_export(window, items, tmp_path / "exported", ExportOptions(format=OutputFormat.PNG))
    wait_idle(qtbot, window)
    written = sorted(p.relative_to(tmp_path / "exported").as_posix() for p in window.last_export)
    assert written == ["alice/a1-protected.png", "alice/a2-protected.png", "alice/manifest.json",
                       "alice/report.html", "bob/b1-protected.png", "bob/manifest.json",
                       "bob/report.html"]
    for p in window.last_export:
        if p.suffix != ".png":
            continue
        with Image.open(p) as img:
            assert img.format == "PNG" and img.size == (96, 72)
    assert any("Exported 3 photos" in t for t in window.notes.visible_texts())
    # The settings remember the chosen output.
    from dladiff_app.core.settings import load_settings

    saved = load_settings(tmp_path / "config" / "settings.json")
    assert saved.output_format == "jpeg" and saved.jpeg_quality == 80


def test_strength_panel_drives_the_job(qtbot, make_window, photos) -> None:  # type: ignore[no-untyped-def]
    window = make_window()
    panel = window.strength
    panel.preset.setCurrentIndex(panel.preset.findData("high"))
    assert panel.settings().eps == 16 and panel.settings().preset == "high"
    # High takes twice Medium's steps: the thoroughness slider moves with the preset.
    assert panel.steps_label.text() == "Thorough" and panel.steps.value() == 4
    assert panel.eps_label.text() == ("High: clearly visible (a face pixel changes by at most "
                                      "6%)")
    panel.preset.setCurrentIndex(panel.preset.findData("low"))
    assert panel.steps_label.text() == "Quick" and panel.settings().layer2_steps == 25
    assert panel.eps_label.text() == ("Low: not visible at 100% (a face pixel changes by at "
                                      "most 3%)")
    panel.preset.setCurrentIndex(panel.preset.findData("high"))
    # The figures behind the words are one click away.
    assert not panel.details.isVisibleTo(panel)
    panel.details_button.click()
    assert panel.details.isVisibleTo(panel)
    assert "16/255" in panel.details.text() and "100 steps per face" in panel.details.text()
    panel.eps.setValue(6)
    panel.steps.setValue(0)  # a quarter of Medium's steps
    s = panel.settings()
    assert s.preset == "custom" and s.eps == 6 and s.layer2_steps == 12
    assert panel.steps_label.text() == "Quick look"
    assert panel.preset.currentData() == "custom"
    window.add_paths(photos[:1])
    panel.finetune.setChecked(False)
    panel.zeroshot.setChecked(False)
    assert panel.settings() is None and not window.protect_button.isEnabled()
    assert panel.warning.isVisibleTo(panel)
    panel.zeroshot.setChecked(True)
    window.protect()
    wait_idle(qtbot, window)
    job = window.services.protect.jobs[-1]
    assert job.settings.layers is Layers.ZEROSHOT and job.settings.eps == 6


def test_first_run_offers_download_or_offline_mode(qtbot, make_window, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dladiff_app.core.settings import Settings, load_settings

    window = make_window(Settings(default_output=str(tmp_path / "out")))
    assert window.first_run_banner.isVisibleTo(window)  # at once, not when models arrive
    qtbot.waitUntil(lambda: "insightface buffalo_l" in window.first_run_text.text())
    qtbot.mouseClick(window.first_run_offline, Qt.MouseButton.LeftButton)
    assert not window.first_run_banner.isVisibleTo(window)
    assert window.strength.layers() is Layers.ZEROSHOT
    saved = load_settings(tmp_path / "config" / "settings.json")
    assert saved.first_run_done and saved.offline_zeroshot
    # The offline choice is remembered: the next start begins with the zero-shot shield only.
    window.close()
    again = make_window(saved)
    assert again.strength.layers() is Layers.ZEROSHOT
    assert not again.first_run_banner.isVisibleTo(again)


def test_model_manager_downloads_with_progress_and_cancel(qtbot, make_window, services) -> None:  # type: ignore[no-untyped-def]
    window = make_window()
    manager = window.open_model_manager()
    qtbot.waitUntil(lambda: manager.table.rowCount() == 2)
    assert manager.table.item(1, 2).text() == "Missing"
    assert manager.table.item(0, 3).text() == "21.0 MB"
    manager.select("buffalo_l")
    assert "research only" in manager.license.toPlainText()
    assert not manager.download_button.isEnabled()  # license not accepted yet
    manager.accept_license.setChecked(True)
    services.models.chunk_seconds = 0.2
    qtbot.mouseClick(manager.download_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: manager.progress.maximum() == 1000 and manager.progress.value() > 0)
    qtbot.mouseClick(manager.cancel_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, window)
    assert "cancelled" in manager.message.text()
    assert services.models.downloads == []
    services.models.chunk_seconds = 0.001
    manager.select("buffalo_l")
    qtbot.mouseClick(manager.download_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: manager.table.item(1, 2).text() == "Ready")
    assert (services.models.folder / "buffalo_l.onnx").stat().st_size > 0
    manager.use_local("dlib", "/somewhere/dlib")
    wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: manager.table.item(0, 2).text() == "Ready (your folder)")


def test_geometry_shortcuts_and_accessible_names(qtbot, make_window) -> None:  # type: ignore[no-untyped-def]
    window = make_window()
    assert window.open_action.shortcut() == QKeySequence(QKeySequence.StandardKey.Open)
    assert window.protect_action.shortcut() == QKeySequence("Ctrl+Return")
    assert window.cancel_action.shortcut() == QKeySequence("Esc")
    assert window.export_action.shortcut() == QKeySequence("Ctrl+E")
    unnamed = [b.text() for b in window.findChildren(QAbstractButton)
               if b.isVisibleTo(window) and not b.accessibleName() and b.text()]
    assert unnamed == []
    window.resize(window.width(), 530)
    assert window.height() == 530
    window.close()
    again = make_window()
    # Height is restored exactly; Qt clamps the width to the 800 px offscreen screen.
    assert again.height() == 530


def test_settings_apply_and_persist(qtbot, make_window, services, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from dladiff_app.core.settings import load_settings

    window = make_window()
    new = replace(window.settings, device="cpu", default_output=str(tmp_path / "elsewhere"))
    window.apply_settings(new)
    wait_idle(qtbot, window)
    assert services.device.requested[-1] == "cpu"
    assert window.output_dir == tmp_path / "elsewhere"
    assert load_settings(tmp_path / "config" / "settings.json").device == "cpu"
