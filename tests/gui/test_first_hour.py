"""What a new user meets in the first hour: a photo some face model still recognises is not
shown as "Protected", the counts of a run add up to its photos, the Models window is readable,
closing during a run asks first, and a shield that cannot run cannot be ticked."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from dladiff_app.core.results import IdentityScore, PhotoResult
from dladiff_app.gui.batch_list import STATUS_COLOURS, Status
from tests.gui.fakes import fake_faces

pytestmark = pytest.mark.gui

ARC_OTHER = IdentityScore("arcface_buffalo_l", "cosine", 0.12, 0.30, False)
SFACE_SAME = IdentityScore("sface", "cosine", 0.55, 0.36, True)
DLIB_SAME = IdentityScore("dlib_resnet", "euclidean", 0.41, 0.60, True)
DLIB_OTHER = IdentityScore("dlib_resnet", "euclidean", 0.81, 0.60, False)
LOST = IdentityScore("sface", "cosine", None, 0.36, None, "no face after sharing")


def wait_idle(qtbot, window) -> None:  # type: ignore[no-untyped-def]
    qtbot.waitUntil(lambda: not window.engine.busy, timeout=15_000)


def test_recognised_after_sharing_is_not_green(qtbot, make_window, photos,  # type: ignore[no-untyped-def]
                                               fake_protect) -> None:
    fake_protect.scores = (ARC_OTHER, DLIB_OTHER)
    fake_protect.after_sharing = (ARC_OTHER, SFACE_SAME)
    window = make_window()
    window.add_paths(photos)
    window.protect()
    wait_idle(qtbot, window)
    for entry in window.batch.entries():
        assert entry.status is Status.RECOGNISED
        assert entry.status_text.startswith("Changed, still recognised by SFace")
    assert STATUS_COLOURS[Status.RECOGNISED] != STATUS_COLOURS[Status.DONE]
    albums = [window.batch.topLevelItem(i).text(1) for i in range(2)]
    assert albums == ["0/2 protected, 2 still recognised", "0/1 protected, 1 still recognised"]
    text = window.progress_label.text()
    assert "0 protected, 3 changed but still recognised by a face model, 0 failed, 0 skipped" \
        in text, text
    assert window.export_action.isEnabled()  # the files exist and can still be exported


def test_file_scores_count_when_sharing_lost_the_face(qtbot, make_window, photos,  # type: ignore[no-untyped-def]
                                                      fake_protect) -> None:
    fake_protect.scores = (ARC_OTHER, DLIB_SAME)
    fake_protect.after_sharing = (LOST,)
    window = make_window()
    window.add_paths(photos[:1])
    window.protect()
    wait_idle(qtbot, window)
    entry, = window.batch.entries()
    assert entry.status is Status.RECOGNISED
    assert entry.status_text.startswith("Changed, still recognised by dlib face recognition")


def _result(tmp_path: Path, name: str, after: tuple[IdentityScore, ...]) -> PhotoResult:
    faces = fake_faces(96, 72, 1, (ARC_OTHER,), after)
    return PhotoResult(source=str(tmp_path / name), output=str(tmp_path / f"p-{name}"),
                       width=96, height=72, seconds=1.0, scores=(ARC_OTHER,),
                       scores_after_sharing=after, faces=1, per_face=faces,
                       layers_done=("layer2",))


def test_counts_add_up_to_the_photos(qtbot, make_window, photos, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from dladiff_app.gui.batch_list import run_counts

    window = make_window()
    window.add_paths(photos)
    a1, a2, b1 = (p.resolve() for p in photos)
    window.batch.set_result(a1, _result(tmp_path, "a1.png", (ARC_OTHER, DLIB_OTHER)))
    window.batch.set_result(a2, _result(tmp_path, "a2.png", (ARC_OTHER, SFACE_SAME)))
    window.batch.set_status(b1, Status.UNPROTECTED, "no face found in b1.png")
    assert window.batch.entry(a1).status is Status.DONE
    assert window.batch.entry(a1).status_text == "Protected"
    assert window.batch.entry(a2).status is Status.RECOGNISED
    assert run_counts(window.batch.entries()) == (
        "1 protected, 1 changed but still recognised by a face model, "
        "1 NOT protected (no face found), 0 failed, 0 skipped")
    assert window.batch.topLevelItem(0).text(1) == "1/2 protected, 1 still recognised"


def test_models_window_is_readable_at_its_default_size(qtbot, make_window, services) -> None:  # type: ignore[no-untyped-def]
    from dladiff_app.core.services import ModelRow
    from dladiff_app.engine.models.registry import REGISTRY

    # The real titles, purposes and licence names: their length is what has to fit.
    services.models.rows[:] = [
        ModelRow(s.id, s.title, s.purpose, False, s.size_bytes, s.license_name, s.license_text,
                 None, "missing") for s in REGISTRY.values()]
    window = make_window()
    manager = window.open_model_manager()
    n = len(REGISTRY)
    qtbot.waitUntil(lambda: manager.table.rowCount() == n)
    qtbot.waitExposed(manager)
    table = manager.table
    assert not manager.isMaximized() and not manager.isFullScreen()
    screen = manager.screen().availableGeometry()
    assert manager.width() <= screen.width() and manager.height() <= screen.height()
    used_for = table.columnWidth(1)
    assert used_for >= 0.4 * table.viewport().width() and used_for >= 250, \
        [table.columnWidth(c) for c in range(5)]
    line = table.fontMetrics().lineSpacing()
    tallest = max(table.rowHeight(r) for r in range(n))
    # At the test screen's 800 px width the longest purpose wraps to six lines, not a word a line.
    assert tallest <= 7 * line, (tallest, line)
    visible = sum(table.rowViewportPosition(r) >= 0 and table.rowViewportPosition(r)
                  + table.rowHeight(r) <= table.viewport().height() for r in range(n))
    assert visible >= 6, (visible, table.viewport().height(), tallest)


def _answer(qtbot, button_text: str, seen: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Click ``button_text`` in the quit question once it is up (it is modal: exec() blocks)."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QMessageBox

    def click() -> None:
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(20, click)
            return
        seen.append(box.text())
        button = next(b for b in box.buttons() if b.text() == button_text)
        button.click()

    QTimer.singleShot(20, click)


def test_closing_during_a_run_asks_first(qtbot, make_window, photos, fake_protect) -> None:  # type: ignore[no-untyped-def]
    fake_protect.slow_from_photo = 1  # the second photo runs until cancelled
    window = make_window()
    window.add_paths(photos)
    window.protect()
    first = window.batch.entry(photos[0].resolve())
    qtbot.waitUntil(lambda: first.status is Status.DONE, timeout=10_000)
    asked: list[str] = []
    _answer(qtbot, "Keep running", asked)
    assert window.close() is False
    assert asked == ["Photos are still being protected (2 of 3 photos left)."]
    assert window.isVisible() and window.engine.job_running
    assert fake_protect.cancel_seen_at is None

    _answer(qtbot, "Cancel and quit", asked)
    assert window.close() is True
    assert len(asked) == 2 and not window.isVisible()
    # The engine saw the cancel at a step and its thread was joined, not killed.
    from dladiff_app.gui.engine_thread import running_threads

    assert fake_protect.cancel_seen_at is not None and not running_threads()


def test_closing_when_idle_does_not_ask(qtbot, make_window, photos) -> None:  # type: ignore[no-untyped-def]
    from PySide6.QtWidgets import QApplication

    window = make_window()
    window.add_paths(photos)
    assert window.close() is True
    assert QApplication.activeModalWidget() is None


def test_finetune_shield_cannot_be_ticked_without_stable_diffusion(qtbot, make_window,  # type: ignore[no-untyped-def]
                                                                   services) -> None:
    from dataclasses import replace

    from dladiff_app.core.presets import Layers
    from dladiff_app.core.services import ModelRow

    services.models.rows.append(ModelRow("sd15", "Stable Diffusion 1.5", "Fine-tuning shield",
                                         False, 4_000_000_000, "OpenRAIL-M", "text", None,
                                         "missing"))
    window = make_window()
    box, note = window.strength.finetune, window.strength.finetune_missing
    qtbot.waitUntil(lambda: not box.isEnabled())
    qtbot.mouseClick(box, Qt.MouseButton.LeftButton)
    assert not box.isChecked()
    for preset in ("low", "medium", "high"):  # no preset ticks it behind the user's back
        window.strength.set_preset(preset)
        assert window.strength.settings().layers is Layers.ZEROSHOT
    window.strength.set_layers(Layers.BOTH)
    assert not box.isChecked()
    assert note.isVisibleTo(window) and "Stable Diffusion" in note.text()
    assert "Models" in note.text() and box.toolTip() == note.text()
    for command_like in ("`", "dladiff ", "dev.py", "--"):
        assert command_like not in note.text()
    # Once the model is there the shield can be used again (and is switched back on).
    services.models.rows[-1] = replace(services.models.rows[-1], present=True)
    window.open_model_manager()
    qtbot.waitUntil(box.isEnabled)
    assert box.isChecked() and not note.isVisibleTo(window)
