"""The quick preview: one face before and after a few zero-shot steps, at 100% and 300%.

The engine's ``preview_face`` runs on the engine thread (cancellable, writing nothing); this
dialog shows the original and the protected face crop side by side at 100% and at 300% with
nearest-neighbour zoom (each pixel a 3x3 block, so the change is seen as it is, not smoothed),
the two sides of each zoom scrolling together, and the visibility figures in words.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QCloseEvent, QImage, QPixmap
from PySide6.QtWidgets import (
    QDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLayout,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.presets import ProtectionSettings
from dladiff_app.core.score_words import UNSEEN_MODELS_NOTE, encoder_label
from dladiff_app.core.services import FacePreview, ProtectService
from dladiff_app.core.visibility_words import face_change_figures, face_change_words
from dladiff_app.gui.compare_view import array_to_qimage, badge_colour
from dladiff_app.gui.engine_thread import EngineThread

ZOOMS = (1, 3)
# The largest viewport of one crop, in screen pixels: two rows of them and the figures fit a
# 900-pixel-high screen.
VIEW_SIDE = 256


def zoomed(image: QImage, factor: int) -> QImage:
    """``image`` enlarged ``factor`` times with nearest-neighbour sampling (no smoothing)."""
    if factor == 1:
        return image
    return image.scaled(image.width() * factor, image.height() * factor,
                        Qt.AspectRatioMode.IgnoreAspectRatio,
                        Qt.TransformationMode.FastTransformation)


class _Progress(QObject):
    """Carries the engine thread's step callbacks to the UI thread (a queued signal)."""

    step = Signal(int, int)


def _scroll(image: QImage, name: str) -> QScrollArea:
    label = QLabel()
    label.setPixmap(QPixmap.fromImage(image))
    area = QScrollArea()
    area.setAccessibleName(name)
    area.setWidget(label)
    area.setAlignment(Qt.AlignmentFlag.AlignCenter)
    area.setFixedSize(min(image.width(), VIEW_SIDE) + 4, min(image.height(), VIEW_SIDE) + 4)
    return area


def _link(a: QScrollArea, b: QScrollArea) -> None:
    """Scroll both sides together: the same place of the face before and after."""
    for one, other in ((a, b), (b, a)):
        one.horizontalScrollBar().valueChanged.connect(other.horizontalScrollBar().setValue)
        one.verticalScrollBar().valueChanged.connect(other.verticalScrollBar().setValue)


class FacePreviewDialog(QDialog):
    """Runs one preview when shown with :meth:`start`; Cancel stops it at the next step."""

    def __init__(self, engine: EngineThread, protect: ProtectService, source: Path,
                 settings: ProtectionSettings, strength: str,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Preview of the protection")
        self.engine, self.protect, self.source, self.settings = engine, protect, source, settings
        self.token: CancelToken | None = None
        self.result: FacePreview | None = None
        self.views: dict[tuple[str, int], QScrollArea] = {}
        self._progress = _Progress(self)
        self._progress.step.connect(self._on_step)

        self.heading = QLabel(f"{source.name} · {strength}")
        self.heading.setStyleSheet("font-weight: 600;")
        self.status = QLabel()
        self.status.setAccessibleName("Preview status")
        self.status.setWordWrap(True)
        self.bar = QProgressBar()
        self.bar.setAccessibleName("Preview progress")
        self.grid = QGridLayout()
        self.words = QLabel()
        self.words.setAccessibleName("Change on the face")
        self.words.setWordWrap(True)
        self.scores = QLabel()
        self.scores.setAccessibleName("Identity after the preview")
        self.scores.setWordWrap(True)
        self.note = QLabel()
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: palette(mid);")
        self.cancel_button = QPushButton("Cancel preview")
        self.cancel_button.setAccessibleName("Cancel preview")
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button = QPushButton("Close")
        self.close_button.setAccessibleName("Close preview")
        self.close_button.clicked.connect(self.accept)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.close_button)
        box = QVBoxLayout(self)
        # Never smaller than its contents: the fixed-size views must not slide under the text.
        box.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)
        for widget in (self.heading, self.status, self.bar):
            box.addWidget(widget)
        box.addLayout(self.grid)
        for widget in (self.words, self.scores, self.note):
            box.addWidget(widget)
        box.addLayout(buttons)

    @property
    def running(self) -> bool:
        return self.token is not None

    def start(self) -> None:
        """Ask the engine for the preview (it queues behind anything the engine is doing)."""
        token = self.token = CancelToken()
        source, settings, protect = self.source, self.settings, self.protect
        emit = self._progress.step.emit
        self.status.setText("Protecting the largest face with a few steps…")
        self.bar.setRange(0, 0)
        self.cancel_button.setEnabled(True)
        self.engine.submit(lambda: protect.preview_face(source, settings, token, emit),
                           self._on_done, self._on_failed, cancel=token)

    def cancel(self) -> None:
        if self.token is not None:
            self.token.cancel()
            self.status.setText("Cancelling the preview after the current step…")

    def closeEvent(self, event: QCloseEvent) -> None:
        self.cancel()
        super().closeEvent(event)

    def reject(self) -> None:  # Esc: stop the work too, not only the window
        self.cancel()
        super().reject()

    def accept(self) -> None:
        self.cancel()
        super().accept()

    def _on_step(self, done: int, total: int) -> None:
        if self.token is None:
            return
        self.bar.setRange(0, max(1, total))
        self.bar.setValue(done)
        self.status.setText(f"Protecting the largest face: step {done} of {total}…")

    def _finish(self) -> None:
        self.token = None
        self.bar.setRange(0, 1)
        self.cancel_button.setEnabled(False)

    def _on_failed(self, message: str) -> None:
        cancelled = self.token is not None and self.token.cancelled
        self._finish()
        self.bar.setValue(0)
        self.status.setText("Preview cancelled." if cancelled else f"No preview: {message}")

    def _on_done(self, result: object) -> None:
        assert isinstance(result, FacePreview)
        self._finish()
        self.bar.setValue(1)
        self.result = result
        self.status.setText(f"Done in {result.seconds:.0f} s. Nothing was saved.")
        self._show_images(result)
        self.words.setText(face_change_words(result.face_ssim, result.face_de_mean, result.face_jnd)
                           or "The change on the face could not be measured.")
        self.words.setToolTip(face_change_figures(result.face_ssim, result.face_de_mean,
                                                  result.face_de_p95, result.face_jnd))
        self.scores.setText(" · ".join(
            f"<span style='color:{badge_colour(s)}'>{encoder_label(s.encoder)}: "
            f"{s.verdict}</span>" for s in result.scores) or "No identity model measured it.")
        self.scores.setToolTip(UNSEEN_MODELS_NOTE if result.scores else "")
        others = result.faces_in_photo - 1
        partial = result.steps < result.full_steps
        self.note.setText(
            (f"A preview: {result.steps} of the {result.full_steps} steps a real run takes per "
             "face" if partial else "This face as the real run protects it")
            + ", on this face only" + (f" ({others} other face{'s' if others > 1 else ''} "
                                       "in the photo are protected in the real run)"
                                       if others > 0 else "")
            + (". With more steps the real run protects better within the same look."
               if partial else ": the look and the verdicts are the album's for this face.")
            + (" The fine-tuning shield adds its own change over the whole photo."
                         if self.settings.layers.finetune else ""))
        # Wrapped labels report one line to the layout; reserve their real height so the
        # fixed-size views above never slide under them.
        width = 2 * (VIEW_SIDE + 4) + 60  # the two views and the zoom column
        for label in (self.words, self.scores, self.note):
            label.setMinimumHeight(label.heightForWidth(width))
        self.adjustSize()

    def _show_images(self, result: FacePreview) -> None:
        while self.grid.count():
            item = self.grid.takeAt(0)
            if item is not None and item.widget() is not None:
                item.widget().deleteLater()  # type: ignore[union-attr]
        self.views.clear()
        before, after = array_to_qimage(result.original), array_to_qimage(result.protected)
        self.grid.addWidget(QLabel("Original"), 0, 1, Qt.AlignmentFlag.AlignHCenter)
        self.grid.addWidget(QLabel("Protected (preview)"), 0, 2, Qt.AlignmentFlag.AlignHCenter)
        for row, factor in enumerate(ZOOMS, start=1):
            self.grid.addWidget(QLabel(f"{factor * 100}%"), row, 0)
            a = _scroll(zoomed(before, factor), f"Original at {factor * 100}%")
            b = _scroll(zoomed(after, factor), f"Protected at {factor * 100}%")
            _link(a, b)
            self.grid.addWidget(a, row, 1)
            self.grid.addWidget(b, row, 2)
            self.views[("original", factor)] = a
            self.views[("protected", factor)] = b
            # Centred once the scroll ranges are known (after layout), each side on its own
            # (a side whose range arrives later would otherwise stay at the corner).
            for area in (a, b):
                for bar in (area.horizontalScrollBar(), area.verticalScrollBar()):
                    bar.rangeChanged.connect(
                        lambda *_, area=area, factor=factor: self._centre(area, result, factor))
                self._centre(area, result, factor)

    @staticmethod
    def _centre(area: QScrollArea, result: FacePreview, factor: int) -> None:
        """Open a zoomed view on the middle of the face (eyes, nose), where the change shows."""
        x0, y0, x1, y1 = result.box
        view = area.viewport().size() if area.viewport() else area.size()
        area.horizontalScrollBar().setValue(int((x0 + x1) / 2 * factor - view.width() / 2))
        area.verticalScrollBar().setValue(int((y0 + y1) / 2 * factor - view.height() / 2))
