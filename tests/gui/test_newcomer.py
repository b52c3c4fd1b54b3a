"""What a newcomer meets: a viewer that opens fitted and explains group photos, results that
open, plain words with the figures one click away, honest devices, exports measured again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices

from dladiff_app.core.jobs import ExportOptions, OutputFormat
from dladiff_app.core.presets import Layers
from dladiff_app.core.services import DeviceSummary
from dladiff_app.gui.batch_list import Status

pytestmark = pytest.mark.gui


def wait_idle(qtbot, window) -> None:  # type: ignore[no-untyped-def]
    qtbot.waitUntil(lambda: not window.engine.busy, timeout=10_000)


def protect_all(qtbot, window, paths) -> None:  # type: ignore[no-untyped-def]
    window.add_paths(paths)
    window.protect()
    wait_idle(qtbot, window)


def test_each_photo_opens_fitted_whatever_the_last_zoom(qtbot, make_window, photos) -> None:  # type: ignore[no-untyped-def]
    window = make_window()
    protect_all(qtbot, window, photos[:2])
    canvas = window.viewer.canvas
    window.batch.select_path(photos[0].resolve())
    window.show_selected_in_viewer()
    canvas.centre_on(10, 10, 4 * canvas.scale())  # the user zooms into a corner
    assert canvas.zoom > 1 and canvas.pan.x() != 0
    window.batch.select_path(photos[1].resolve())
    window.show_selected_in_viewer()
    assert canvas.zoom == 1.0 and (canvas.pan.x(), canvas.pan.y()) == (0, 0)
    assert canvas.divider == 0.5 and canvas.selected_face is None
    rect = canvas.image_rect()  # the whole photo is on screen
    assert rect.left() >= 0 and rect.right() <= canvas.width() + 0.5
    assert rect.top() >= 0 and rect.bottom() <= canvas.height() + 0.5


def test_group_photo_has_a_badge_and_an_outline_per_face(qtbot, make_window, tmp_path,
                                                         fake_protect) -> None:  # type: ignore[no-untyped-def]
    group = tmp_path / "in" / "party" / "group.png"
    group.parent.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 900, 3), np.uint8)).save(group)
    fake_protect.face_counts = {"group.png": 3}
    fake_protect.scores = fake_protect.scores * 4  # long lines, as with several encoders
    window = make_window()
    window.resize(1000, 760)
    protect_all(qtbot, window, [group])
    window.batch.select_path(group.resolve())
    window.show_selected_in_viewer()
    view, canvas = window.viewer, window.viewer.canvas
    assert [label for _, label, _ in canvas.faces] == ["1", "2", "3"]
    faces = [b for b in view.badges if b.accessibleName().endswith("identity scores")]
    assert [b.text().split(" · ")[0] for b in faces] == ["Face 1", "Face 2", "Face 3"]
    assert "ArcFace (buffalo_l): different person (0.12)" in faces[0].text()
    assert "after JPEG/resize different person (0.25)" in faces[0].text()
    assert "3 faces" in view.badges[0].text()
    # Every badge of a small group is on screen, none behind a scroll bar.
    assert view.scores_scroll.height() >= sum(b.height() for b in view.badges)
    # Long score lines wrap: they never widen the window.
    assert window.viewer.minimumSizeHint().width() < 700
    # Clicking face 3 compares that face: its centre sits under the divider on both halves.
    qtbot.mouseClick(faces[2], Qt.MouseButton.LeftButton)
    assert canvas.selected_face == 2
    (x0, y0, x1, y1), _, _ = canvas.faces[2]
    rect, s = canvas.image_rect(), canvas.scale()
    centre_x = rect.x() + (x0 + x1) / 2 * s
    assert centre_x == pytest.approx(canvas.divider_x(), abs=1.0)
    assert rect.y() + (y0 + y1) / 2 * s == pytest.approx(canvas.height() / 2, abs=1.0)
    # 100%: one photo pixel per screen pixel, still on that face.
    view.actual_button.click()
    assert canvas.scale() == pytest.approx(1.0)
    rect = canvas.image_rect()
    assert rect.x() + (x0 + x1) / 2 == pytest.approx(canvas.divider_x(), abs=1.0)
    view.fit_button.click()
    assert canvas.zoom == 1.0 and canvas.selected_face is None


def test_finished_album_says_what_it_is_protected_against_and_opens(
        qtbot, make_window, photos, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    opened: list[QUrl] = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url) or True)
    window = make_window()
    assert not window.finished_panel.isVisibleTo(window)
    window.strength.set_layers(Layers.ZEROSHOT)
    protect_all(qtbot, window, photos)
    assert window.finished_panel.isVisibleTo(window)
    texts = [label.text() for label in window.verdict_labels]
    assert len(texts) == 2 and texts[0].startswith("alice: protected against one-photo tools")
    assert "2 of 2 faces read as a different person after JPEG/resize" in texts[0]
    # The models that judged are named, and so is what they cannot promise.
    assert ("by ArcFace (buffalo_l) and dlib face recognition, the face models the shield "
            "worked against (models it never saw may still recognise some)") in texts[0]
    assert all("not protected against fine-tuning (DreamBooth/LoRA)" in t for t in texts)
    out = Path(window.batch.entry(photos[0].resolve()).result.output).parent
    window.open_folder_buttons[0].click()
    window.open_report_buttons[0].click()
    assert [u.toLocalFile() for u in opened] == [str(out), str(out / "report.html")]
    # Both shields and every face hidden: the verdict claims both.
    window.strength.set_layers(Layers.BOTH)
    window.batch.clear_all()
    extra = photos[0].parent / "again.png"
    Image.open(photos[0]).save(extra)
    protect_all(qtbot, window, [extra])
    assert "protected against fine-tuning (DreamBooth/LoRA)." in window.verdict_labels[0].text()
    assert "not protected" not in window.verdict_labels[0].text()


def test_a_failing_file_manager_is_reported(qtbot, make_window, photos, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: False)
    window = make_window()
    protect_all(qtbot, window, photos[:1])
    window.open_folder_buttons[0].click()
    assert any("Could not open" in t for t in window.notes.visible_texts())


def test_progress_shows_on_the_viewer_page_and_cancel_leaves_an_honest_bar(
        qtbot, make_window, photos, fake_protect) -> None:  # type: ignore[no-untyped-def]
    fake_protect.slow_from_photo = 1
    fake_protect.step_seconds = 0.01
    window = make_window()
    window.add_paths(photos)
    window.protect()
    window.tabs.setCurrentWidget(window.viewer)
    qtbot.waitUntil(lambda: window.batch.entry(photos[0].resolve()).status is Status.DONE)
    assert window.status_progress.isVisibleTo(window) and window.status_progress.value() > 0
    window.cancel()
    wait_idle(qtbot, window)
    assert not window.status_progress.isVisibleTo(window)
    # One of three photos is done: the bar says a third, not the last in-flight fraction.
    assert window.batch_progress.value() == 333


def test_long_status_keeps_the_photo_column_readable(qtbot, make_window, photos) -> None:  # type: ignore[no-untyped-def]
    window = make_window()
    window.resize(1000, 700)
    window.add_paths(photos)
    long = "No face found in a1.png: the zero-shot shield was skipped for this photo. " * 3
    window.batch.set_status(photos[0].resolve(), Status.SKIPPED, long)
    qtbot.wait(50)
    assert window.batch.columnWidth(0) >= 0.5 * window.batch.viewport().width()
    assert window.batch.columnWidth(0) >= 180


def test_export_report_is_measured_on_the_exported_jpegs(qtbot, make_window, photos,
                                                        tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dladiff_app.core.imageio import load_image
    from dladiff_app.core.quality import psnr
    from dladiff_app.gui.export_album import export_items, run_export
    from tests.fixtures.manifest_schema import validate_manifest

    window = make_window()
    protect_all(qtbot, window, photos)
    run_export(window, export_items(window), tmp_path / "shared",
               ExportOptions(format=OutputFormat.JPEG, quality=60))
    wait_idle(qtbot, window)
    manifest = tmp_path / "shared" / "alice" / "manifest.json"
    doc = json.loads(manifest.read_text())
    assert validate_manifest(doc) == []
    assert doc["job"]["export"]["format"] == "jpeg" and doc["job"]["export"]["quality"] == 60
    assert doc["job"]["export"]["measured_on"] == "the exported files"
    assert len(doc["photos"]) == 2
    for record in doc["photos"]:
        exported = Path(record["output"])
        assert exported.parent == tmp_path / "shared" / "alice" and exported.suffix == ".jpg"
        measured = psnr(load_image(record["source"]).pixels, load_image(exported).pixels)
        assert record["psnr"] == pytest.approx(measured)
        assert record["psnr"] != pytest.approx(41.25)  # not the PNG run's figure, copied
        assert record["scores"][0]["value"] == pytest.approx(round(measured / 100, 4))
    report = (tmp_path / "shared" / "alice" / "report.html").read_text()
    assert "a1-protected.jpg" in report
    assert any("measured on the exported files" in t for t in window.notes.visible_texts())


def test_help_names_the_method_models_licences_and_folders(qtbot, make_window, services) -> None:  # type: ignore[no-untyped-def]
    window = make_window()
    qtbot.waitUntil(lambda: len(window.model_rows) == 2)
    window.help_action.trigger()
    dialog = window.help_dialog
    assert dialog is not None and dialog.isVisible()
    pages = {t: dialog.pages[t].toPlainText() for t in dialog.pages}
    assert "Zero-shot shield" in pages["How it works"] and "2511.19910" in pages["How it works"]
    for row in services.models.rows:  # whatever the registry lists, with its licence
        assert row.title in pages["Models and licences"]
        assert row.license_name in pages["Models and licences"]
    assert str(window.output_dir) in pages["Where files go"]
    assert "settings.json" in pages["Where files go"]
    dialog.close()


def test_gpu_choices_only_where_the_machine_has_them(qtbot) -> None:  # type: ignore[no-untyped-def]
    from dladiff_app.core.settings import Settings
    from dladiff_app.gui.settings_dialog import SettingsDialog

    cpu_only = DeviceSummary("cpu", "CPU", None, "", available=("cpu",))
    dialog = SettingsDialog(Settings(), cpu_only)
    qtbot.addWidget(dialog)
    keys = [dialog.device.itemData(i) for i in range(dialog.device.count())]
    assert keys == ["auto", "cpu"]
    nvidia = DeviceSummary("cuda", "RTX", None, "", available=("cuda", "cpu"))
    dialog = SettingsDialog(Settings(device="mps"), nvidia)
    qtbot.addWidget(dialog)
    labels = [dialog.device.itemText(i) for i in range(dialog.device.count())]
    assert labels[1] == "NVIDIA GPU (CUDA)" and "not found on this computer" in labels[2]
    assert dialog.device.currentData() == "mps"  # a saved choice is shown, never dropped


def test_a_crowd_scrolls_its_badges_instead_of_squeezing_the_photo(qtbot, make_window, tmp_path,
                                                                    fake_protect) -> None:  # type: ignore[no-untyped-def]
    crowd = tmp_path / "in" / "class" / "crowd.png"
    crowd.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((200, 2000, 3), np.uint8)).save(crowd)
    fake_protect.face_counts = {"crowd.png": 24}
    window = make_window()
    window.resize(1000, 760)
    protect_all(qtbot, window, [crowd])
    window.batch.select_path(crowd.resolve())
    window.show_selected_in_viewer()
    qtbot.wait(50)
    assert len(window.viewer.canvas.faces) == 24
    assert window.viewer.scores_scroll.height() == 200  # capped; the rest scrolls
    assert window.viewer.canvas.height() >= 250
