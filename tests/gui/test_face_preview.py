"""The quick preview in the strength panel, and the viewer's words for the change on the face
(real MainWindow, fake engine services that measure real pixels)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from dladiff_app.core.visibility import face_visibility
from dladiff_app.core.visibility_words import change_level
from tests.gui.test_main_window import wait_idle


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def _image_array(area) -> np.ndarray:  # type: ignore[no-untyped-def]
    from dladiff_app.gui.compare_view import qimage_to_array

    return qimage_to_array(area.widget().pixmap().toImage())


def test_preview_shows_the_face_at_100_and_300_percent_and_saves_nothing(  # type: ignore[no-untyped-def]
        qtbot, make_window, photos, fake_protect, tmp_path) -> None:
    from PIL import Image

    big = photos[1].parent / "big.png"  # larger than the 300% view: it scrolls
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (160, 200, 3), np.uint8)).save(big)
    window = make_window()
    assert not window.strength.preview_button.isEnabled()  # no photo yet
    window.add_paths([*photos, big])
    window.batch.select_path(big.resolve())
    window.strength.set_preset("high")
    assert window.strength.preview_button.isEnabled()
    before = _files(tmp_path)
    window.strength.preview_button.click()
    dialog = window.preview_dialog
    assert dialog is not None and dialog.isVisible()
    qtbot.waitUntil(lambda: dialog.result is not None, timeout=10_000)
    wait_idle(qtbot, window)
    # The selected photo, at the chosen strength, on the engine thread; nothing written.
    (photo, settings, thread), = fake_protect.previews
    assert photo == big.resolve() and settings.eps == 16.0 and settings.preset == "high"
    assert thread != threading.main_thread().name
    assert _files(tmp_path) == before
    preview = dialog.result
    # 100%: the crops as they are; 300%: every pixel a 3x3 block (nearest neighbour).
    for side, pixels in (("original", preview.original), ("protected", preview.protected)):
        one = _image_array(dialog.views[(side, 1)])
        three = _image_array(dialog.views[(side, 3)])
        assert np.array_equal(one, pixels)
        assert three.shape == (pixels.shape[0] * 3, pixels.shape[1] * 3, 3)
        assert np.array_equal(three, np.repeat(np.repeat(pixels, 3, axis=0), 3, axis=1))
    assert not np.array_equal(preview.original, preview.protected)
    # The two sides of a zoom scroll together.
    # The 300% views open on the middle of the face; the two sides scroll together.
    a, b = dialog.views[("original", 3)], dialog.views[("protected", 3)]
    qtbot.waitUntil(lambda: a.horizontalScrollBar().value() > 0)
    assert b.horizontalScrollBar().value() == a.horizontalScrollBar().value()
    a.verticalScrollBar().setValue(37)
    assert b.verticalScrollBar().value() == 37
    # The change in words, the figures on hover, the honest note about the few steps.
    vis = face_visibility(preview.original, preview.protected, [preview.box])
    assert vis is not None
    assert dialog.words.text().startswith("Change on the face: ")
    assert f"colour difference {vis.de_mean:.1f}, visible from about 2.3" in dialog.words.text()
    assert f"face ΔE2000 mean {vis.de_mean:.2f}" in dialog.words.toolTip()
    assert "dlib face recognition: different person" in dialog.scores.text()
    assert "12 of the 100 steps" in dialog.note.text()
    assert "protects better within the same look" in dialog.note.text()
    assert "Nothing was saved" in dialog.status.text()
    dialog.close_button.click()
    assert not dialog.isVisible()


def test_preview_can_be_cancelled_and_names_a_photo_without_a_face(  # type: ignore[no-untyped-def]
        qtbot, make_window, photos, fake_protect) -> None:
    fake_protect.preview_steps = 2000  # long enough to cancel mid-way
    window = make_window()
    window.add_paths(photos[:1])
    window.strength.preview_button.click()
    dialog = window.preview_dialog
    qtbot.waitUntil(lambda: dialog.bar.value() >= 2, timeout=10_000)
    assert dialog.running and "step" in dialog.status.text()
    dialog.cancel_button.click()
    wait_idle(qtbot, window)
    assert dialog.status.text() == "Preview cancelled." and dialog.result is None
    assert fake_protect.cancel_seen_at is not None and not dialog.running
    dialog.close_button.click()
    # A photo without a face: the engine's reason, in the dialog.
    fake_protect.face_counts = {photos[0].name: 0}
    fake_protect.preview_steps = 2
    window.strength.preview_button.click()
    dialog = window.preview_dialog
    qtbot.waitUntil(lambda: not dialog.running, timeout=10_000)
    assert dialog.status.text().startswith(f"No preview: No face found in {photos[0].name}")
    dialog.close_button.click()


def test_preview_needs_the_zero_shot_shield(qtbot, make_window, photos) -> None:  # type: ignore[no-untyped-def]
    window = make_window()
    window.add_paths(photos[:1])
    assert window.strength.preview_button.isEnabled()
    window.strength.zeroshot.setChecked(False)
    assert not window.strength.preview_button.isEnabled()


@pytest.mark.parametrize("noise", [0, 12])
def test_viewer_says_how_visible_the_change_on_the_face_is(  # type: ignore[no-untyped-def]
        qtbot, make_window, photos, fake_protect, noise) -> None:
    fake_protect.face_noise = noise
    window = make_window()
    window.add_paths(photos[:1])
    window.protect()
    wait_idle(qtbot, window)
    window.batch.select_path(photos[0].resolve())
    window.show_selected_in_viewer()
    result = window.viewer.result
    assert result is not None and result.face_de_mean is not None
    words = window.viewer.face_change
    assert words.isVisibleTo(window)
    level = change_level(result.face_de_mean)
    assert words.text().startswith(f"Change on the face: {level} (")
    assert (level == "not visible") == (noise == 0)
    assert f"colour difference {result.face_de_mean:.1f}" in words.text()
    assert f"face SSIM {result.face_ssim:.4f}" in words.toolTip()
    assert "just noticeable" in words.toolTip()
    window.viewer.figures_button.click()
    assert f"face ΔE2000 mean {result.face_de_mean:.2f}" in window.viewer.figures.text()
    if noise:
        assert result.face_de_mean > 1.0 and result.face_ssim < 1.0
    else:
        assert result.face_de_mean == 0.0
