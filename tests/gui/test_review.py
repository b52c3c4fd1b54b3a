"""Behaviours fixed after a user's-eye review of the screenshots (offscreen, fake engine)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from PySide6.QtWidgets import QLineEdit

from dladiff_app.core.jobs import ExportOptions, OutputFormat
from dladiff_app.core.presets import Layers
from dladiff_app.gui.batch_list import Status

pytestmark = pytest.mark.gui


def test_export_dialog_png_needs_no_quality(qtbot) -> None:  # type: ignore[no-untyped-def]
    from dladiff_app.gui.export_dialog import ExportDialog

    dialog = ExportDialog(None, ExportOptions(), title="Export", intro="Copy.", action="Export")
    qtbot.addWidget(dialog)
    assert dialog.ok_button.text() == "Export"
    assert dialog.options().format is OutputFormat.PNG
    assert not dialog.quality.isEnabled() and dialog.lossy_note.isHidden()
    dialog.format.setCurrentIndex(dialog.format.findData(OutputFormat.JPEG))
    assert dialog.options().format is OutputFormat.JPEG
    assert dialog.quality.isEnabled() and not dialog.lossy_note.isHidden()


@pytest.mark.parametrize("which", ["settings", "export"])
def test_dialogs_show_whole_placeholders(qtbot, which: str) -> None:  # type: ignore[no-untyped-def]
    from dladiff_app.core.settings import Settings
    from dladiff_app.gui.export_dialog import ExportDialog
    from dladiff_app.gui.settings_dialog import SettingsDialog

    dialog = (SettingsDialog(Settings(), None) if which == "settings" else
              ExportDialog(None, ExportOptions(), title="Export", intro="Copy."))
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitExposed(dialog)
    for edit in dialog.findChildren(QLineEdit):
        if edit.placeholderText() and edit.isVisible():
            needed = edit.fontMetrics().horizontalAdvance(edit.placeholderText())
            assert edit.width() > needed + 10, (edit.accessibleName(), edit.width(), needed)


def test_model_manager_opens_on_a_license(qtbot, make_window) -> None:  # type: ignore[no-untyped-def]
    window = make_window()
    manager = window.open_model_manager()
    qtbot.waitUntil(lambda: manager.table.rowCount() == 2)
    assert manager.selected_row() is not None and manager.selected_row().id == "buffalo_l"
    assert "research only" in manager.license.toPlainText()


def test_finetune_shield_says_when_sd_is_missing(qtbot, make_window, services) -> None:  # type: ignore[no-untyped-def]
    from dladiff_app.core.services import ModelRow

    services.models.rows.append(ModelRow("sd15", "Stable Diffusion 1.5", "Fine-tuning shield",
                                         False, 4_000_000_000, "OpenRAIL-M", "text", None,
                                         "missing"))
    window = make_window()
    note = window.strength.finetune_missing
    assert window.strength.finetune.isChecked()  # before the model list arrived
    # Without Stable Diffusion the shield starts unticked instead of promised and skipped.
    qtbot.waitUntil(lambda: not window.strength.finetune.isChecked())
    # It cannot be ticked, and the reason is shown under it.
    assert window.strength.layers() is Layers.ZEROSHOT and note.isVisibleTo(window)
    assert not window.strength.finetune.isEnabled()
    services.models.rows[-1] = replace(services.models.rows[-1], present=True)
    window.open_model_manager()
    qtbot.waitUntil(lambda: not note.isVisibleTo(window))


def test_cancel_clears_progress_and_unreached_photos(qtbot, make_window, photos, fake_protect) -> None:  # type: ignore[no-untyped-def]
    fake_protect.slow_from_photo = 1
    fake_protect.step_seconds = 0.01
    window = make_window()
    window.add_paths(photos)
    assert window.batch.entry(photos[0].resolve()).status_text == "Not protected yet"
    window.protect()
    second = window.batch.entry(photos[1].resolve())
    third = window.batch.entry(photos[2].resolve())
    assert third.status_text == "Not protected yet: waiting its turn"
    qtbot.waitUntil(lambda: second.status is Status.RUNNING and second.percent, timeout=10_000)
    assert window.photo_progress.text() != ""
    window.cancel()
    qtbot.waitUntil(lambda: not window.engine.busy, timeout=10_000)
    assert second.status is Status.CANCELLED
    assert third.status_text == "Not protected yet"  # the run never reached it
    assert window.photo_progress.text() == ""
    assert Path(window.batch.entry(photos[0].resolve()).result.output).is_file()


def test_album_total_leaves_out_files_that_are_not_photos(qtbot, make_window, photos) -> None:  # type: ignore[no-untyped-def]
    text = photos[0].parent / "notes.txt"
    text.write_text("not a photo")
    window = make_window()
    window.add_paths([photos[0].parent])
    window.add_paths([text])
    album = window.batch.topLevelItem(0)
    assert album.text(1) == "0/2 protected (1 skipped)"


def test_viewer_names_encoders_and_the_difference_half(qtbot, make_window, photos) -> None:  # type: ignore[no-untyped-def]
    from dladiff_app.core.score_words import UNSEEN_MODELS_NOTE, encoder_label, model_list

    assert encoder_label("dlib") == "dlib face recognition"
    assert encoder_label("antelopev2") == "ArcFace (antelopev2)"
    assert encoder_label("edgeface") == "EdgeFace"
    assert encoder_label("mystery") == "mystery"
    assert model_list(["dlib", "sface_int8", "dlib", "edgeface"]) == \
        "dlib face recognition, SFace and EdgeFace"
    assert model_list(["sface"]) == "SFace" and model_list([]) == ""
    window = make_window()
    window.add_paths(photos[:1])
    window.protect()
    qtbot.waitUntil(lambda: not window.engine.busy, timeout=10_000)
    window.batch.select_path(photos[0].resolve())
    window.show_selected_in_viewer()
    assert window.viewer.canvas.after_label == "After"
    assert "done: zero-shot shield" in window.viewer.quality.text()
    # Under the verdicts: what they can promise (they come from the attacked models).
    assert window.viewer.score_scope.isVisibleTo(window.viewer)
    assert window.viewer.score_scope.text() == UNSEEN_MODELS_NOTE
    assert "never saw" in UNSEEN_MODELS_NOTE
    window.viewer.clear()
    assert not window.viewer.score_scope.isVisibleTo(window.viewer)
    window.show_selected_in_viewer()
    window.viewer.diff_toggle.setChecked(True)
    assert window.viewer.canvas.after_label.startswith("Difference")
    window.viewer.diff_toggle.setChecked(False)
    assert window.viewer.canvas.after_label == "After"


def test_counts_read_as_sentences(qtbot, make_window, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dladiff_app.core.settings import Settings
    from dladiff_app.gui.wording import counted

    assert (counted(1, "photo"), counted(0, "photo"), counted(2, "model")) == \
        ("1 photo", "0 photos", "2 models")
    window = make_window(Settings(default_output=str(tmp_path / "out")))
    qtbot.waitUntil(lambda: "1 model is not on this computer yet" in window.first_run_text.text())


def test_protect_again_into_the_same_folder(qtbot, make_window, photos, fake_protect) -> None:  # type: ignore[no-untyped-def]
    window = make_window()
    window.add_paths(photos[:1])
    window.protect()
    qtbot.waitUntil(lambda: not window.engine.busy, timeout=10_000)
    window.add_paths(photos[1:])
    window.protect()
    qtbot.waitUntil(lambda: not window.engine.busy, timeout=10_000)
    assert [len(j.inputs) for j in fake_protect.jobs] == [1, 2]
    assert all(window.batch.entry(p.resolve()).status is Status.DONE for p in photos)
    assert not any("journal" in t for t in window.notes.visible_texts())
