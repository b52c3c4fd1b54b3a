"""Before/after viewer: one canvas split by a draggable divider (so zoom and pan are shared by
construction), an amplified difference map, and the identity-score badges the engine measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QImage,
    QImageReader,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPen,
    QResizeEvent,
    QWheelEvent,
)
from PySide6.QtWidgets import (
    QCheckBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from dladiff_app.core.results import FaceResult, IdentityScore, PhotoResult
from dladiff_app.core.score_words import UNSEEN_MODELS_NOTE, encoder_label
from dladiff_app.core.visibility_words import face_change_figures, face_change_words

DIFF_GAIN = 10.0
_GRAB_PX = 8


def qimage_to_array(image: QImage) -> np.ndarray:
    """(H, W, 3) uint8 RGB copy of ``image``."""
    rgb = image.convertToFormat(QImage.Format.Format_RGB888)
    h, w, stride = rgb.height(), rgb.width(), rgb.bytesPerLine()
    buf = np.frombuffer(rgb.constBits(), dtype=np.uint8, count=h * stride)
    return buf.reshape(h, stride)[:, : w * 3].reshape(h, w, 3).copy()


def array_to_qimage(array: np.ndarray) -> QImage:
    """``array``: (H, W, 3) uint8 RGB. Returns an independent QImage."""
    arr = np.ascontiguousarray(array, dtype=np.uint8)
    h, w, _ = arr.shape
    return QImage(arr.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


def difference_map(before: QImage, after: QImage, gain: float = DIFF_GAIN) -> QImage:
    """|after - before| per channel times ``gain``, clipped: makes an 8/255 budget visible."""
    a, b = qimage_to_array(before), qimage_to_array(after)
    if a.shape != b.shape:
        raise ValueError(f"sizes differ: {a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]}")
    diff = np.abs(b.astype(np.int16) - a.astype(np.int16)).astype(np.float32) * gain
    return array_to_qimage(np.clip(diff, 0, 255).astype(np.uint8))


def load_qimage(path: Path | str) -> QImage:
    reader = QImageReader(str(path))
    reader.setAutoTransform(True)
    image = reader.read()
    if image.isNull():
        raise OSError(f"{Path(path).name}: {reader.errorString()}")
    return image


class SplitImageView(QWidget):
    """Left of the divider: before; right: after (or the difference map). Wheel zooms about the
    cursor, dragging pans, dragging near the divider moves it, double-click fits."""

    divider_moved = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Before and after comparison")
        self.setMinimumSize(320, 240)
        self.setMouseTracking(True)
        self.before: QImage | None = None
        self.after: QImage | None = None
        self.divider = 0.5
        self.zoom = 1.0
        self.pan = QPointF(0, 0)
        self._drag: str | None = None
        self.after_label = "After"
        self._last = QPointF()
        # (box in image pixels, label, colour) of each face, drawn on both halves.
        self.faces: list[tuple[tuple[float, float, float, float], str, str]] = []
        self.selected_face: int | None = None

    def set_images(self, before: QImage | None, after: QImage | None) -> None:
        self.before, self.after = before, after
        self.update()

    def set_faces(self, faces: list[tuple[tuple[float, float, float, float], str, str]]) -> None:
        self.faces, self.selected_face = list(faces), None
        self.update()

    def reset_view(self) -> None:
        """The whole photo, fitted, divider in the middle (how every photo opens)."""
        self.zoom, self.pan = 1.0, QPointF(0, 0)
        self.selected_face = None
        self.set_divider(0.5)

    def _fit(self) -> float:
        ref = self.before or self.after
        if ref is None or ref.isNull():
            return 1.0
        return min(self.width() / ref.width(), self.height() / ref.height())

    def scale(self) -> float:
        """Screen pixels per photo pixel (1.0: the photo at 100%)."""
        return self._fit() * self.zoom

    def centre_on(self, x: float, y: float, scale: float) -> None:
        """Show photo point (x, y) in the middle at ``scale`` screen pixels per photo pixel,
        with the divider through it: both halves then show the same place."""
        ref = self.before or self.after
        if ref is None or ref.isNull():
            return
        self.zoom = min(32.0, max(0.05, scale / self._fit()))
        s = self.scale()
        self.pan = QPointF(s * (ref.width() / 2 - x), s * (ref.height() / 2 - y))
        self.set_divider(0.5)

    def actual_pixels(self) -> None:
        """100%: one photo pixel per screen pixel, around the selected face or the middle."""
        ref = self.before or self.after
        if ref is None or ref.isNull():
            return
        if self.selected_face is not None and self.selected_face < len(self.faces):
            x0, y0, x1, y1 = self.faces[self.selected_face][0]
            self.centre_on((x0 + x1) / 2, (y0 + y1) / 2, 1.0)
        else:
            self.centre_on(ref.width() / 2, ref.height() / 2, 1.0)

    def focus_face(self, index: int) -> None:
        """Zoom onto face ``index``: the face at 100% when it fits, else as large as fits, in
        the middle with the divider through it (before and after of the same face)."""
        if not 0 <= index < len(self.faces):
            return
        self.selected_face = index
        x0, y0, x1, y1 = self.faces[index][0]
        # Room for the face and some of its surroundings: 1.6x the box.
        fit_face = min(self.width() / (1.6 * (x1 - x0)), self.height() / (1.6 * (y1 - y0)))
        self.centre_on((x0 + x1) / 2, (y0 + y1) / 2, min(1.0, fit_face))

    def image_rect(self) -> QRectF:
        """Where the photo lands in widget coordinates (fit, then zoom and pan)."""
        ref = self.before or self.after
        if ref is None or ref.isNull():
            return QRectF()
        fit = min(self.width() / ref.width(), self.height() / ref.height())
        scale = fit * self.zoom
        w, h = ref.width() * scale, ref.height() * scale
        return QRectF((self.width() - w) / 2 + self.pan.x(), (self.height() - h) / 2 + self.pan.y(),
                      w, h)

    def divider_x(self) -> float:
        return self.width() * self.divider

    def set_divider(self, fraction: float) -> None:
        self.divider = min(1.0, max(0.0, fraction))
        self.divider_moved.emit(self.divider)
        self.update()

    def paintEvent(self, _event: QPaintEvent) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor("#1f2937"))
        target = self.image_rect()
        if target.isNull():
            p.setPen(QColor("#d1d5db"))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter,
                       "Select a protected photo to compare")
            return
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, self.zoom < 4)
        x = self.divider_x()
        if self.before is not None:
            p.save()
            p.setClipRect(QRectF(0, 0, x, self.height()))
            p.drawImage(target, self.before)
            p.restore()
        if self.after is not None:
            p.save()
            p.setClipRect(QRectF(x, 0, self.width() - x, self.height()))
            p.drawImage(target, self.after)
            p.restore()
        self._paint_faces(p, target)
        p.setPen(QPen(QColor("white"), 2))
        p.drawLine(QPointF(x, 0), QPointF(x, self.height()))
        p.setBrush(QColor("white"))
        p.drawEllipse(QPointF(x, self.height() / 2), 7, 7)
        p.setPen(QColor("white"))
        p.drawText(QRectF(8, 6, 120, 20), Qt.AlignmentFlag.AlignLeft, "Before")
        p.drawText(QRectF(self.width() - 208, 6, 200, 20), Qt.AlignmentFlag.AlignRight,
                   self.after_label)

    def _paint_faces(self, p: QPainter, target: QRectF) -> None:
        ref = self.before or self.after
        if not self.faces or ref is None:
            return
        s = target.width() / ref.width()
        for i, ((x0, y0, x1, y1), label, colour) in enumerate(self.faces):
            rect = QRectF(target.x() + x0 * s, target.y() + y0 * s, (x1 - x0) * s, (y1 - y0) * s)
            pen = QPen(QColor(colour), 3 if i == self.selected_face else 2)
            p.setPen(pen)
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawRect(rect)
            tag = QRectF(rect.x(), rect.y() - 18, max(22.0, 9.0 * len(label) + 8), 18)
            p.fillRect(tag, QColor(colour))
            p.setPen(QColor("white"))
            p.drawText(tag, Qt.AlignmentFlag.AlignCenter, label)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        self._drag = "divider" if abs(pos.x() - self.divider_x()) <= _GRAB_PX else "pan"
        self._last = pos

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        if self._drag == "divider":
            self.set_divider(pos.x() / max(1, self.width()))
        elif self._drag == "pan":
            self.pan += pos - self._last
            self._last = pos
            self.update()
        else:
            near = abs(pos.x() - self.divider_x()) <= _GRAB_PX
            self.setCursor(Qt.CursorShape.SplitHCursor if near else Qt.CursorShape.OpenHandCursor)

    def mouseReleaseEvent(self, _event: QMouseEvent) -> None:
        self._drag = None

    def mouseDoubleClickEvent(self, _event: QMouseEvent) -> None:
        self.reset_view()

    def wheelEvent(self, event: QWheelEvent) -> None:
        factor = 1.25 if event.angleDelta().y() > 0 else 0.8
        new_zoom = min(32.0, max(1.0, self.zoom * factor))
        # Keep the image point under the cursor fixed while zooming.
        pos = event.position()
        centre = QPointF(self.width() / 2, self.height() / 2) + self.pan
        ratio = new_zoom / self.zoom
        self.pan += (pos - centre) * (1 - ratio)
        self.zoom = new_zoom
        if self.zoom == 1.0:
            self.pan = QPointF(0, 0)
        self.update()


# The engine's stage ids, in the words the strength panel uses.
SHIELD_NAMES = {"layer1": "fine-tuning shield", "layer2": "zero-shot shield",
                "finetune": "fine-tuning shield", "zeroshot": "zero-shot shield",
                "polish": "joint polish"}


def badge_text(score: IdentityScore) -> str:
    encoder = encoder_label(score.encoder)
    if score.value is None:
        return f"{encoder}: no face ({score.note})" if score.note else f"{encoder}: no face"
    if score.metric == "euclidean":
        rule = f"same person below {score.threshold:.2f}"
        value = f"distance {score.value:.3f}"
    else:
        rule = f"same person from {score.threshold:.2f}"
        value = f"similarity {score.value:.3f}"
    return f"{encoder}: {value} → {score.verdict} ({rule})"


def badge_colour(score: IdentityScore) -> str:
    if score.same_person is None:
        return "#6b7280"
    return "#b91c1c" if score.same_person else "#15803d"


def face_colour(face: FaceResult) -> str:
    """Red when any encoder still sees the same person (on the file or after sharing), green
    when every measured one sees a different person, grey when nothing could be measured."""
    scores = [s for s in (*face.scores, *face.scores_after_sharing) if s.same_person is not None]
    if not scores:
        return "#6b7280"
    return "#b91c1c" if any(s.same_person for s in scores) else "#15803d"


def _short(score: IdentityScore) -> str:
    if score.value is None:
        return f"no face ({score.note})" if score.note else "no face"
    return f"{score.verdict} ({score.value:.2f})"


def face_badge_text(number: int, face: FaceResult) -> str:
    """One line per face of a group photo: every encoder's verdict, also after sharing."""
    parts = []
    shared = {s.encoder: s for s in face.scores_after_sharing}
    for score in face.scores:
        text = f"{encoder_label(score.encoder)}: {_short(score)}"
        if score.encoder in shared:
            text += f", after JPEG/resize {_short(shared[score.encoder])}"
        parts.append(text)
    if not parts:
        parts.append("not measured")
    return f"Face {number} · " + " · ".join(parts)


def change_words(result: PhotoResult) -> str:
    """The visible cost in words; the engineering figures go to the details line."""
    parts = []
    if result.linf is not None:
        pct = 100 * result.linf / 255
        parts.append(f"each pixel changed by at most {pct:.1f}%")
    parts.append(f"{result.faces} face{'s' if result.faces != 1 else ''} found")
    if result.layers_done:
        parts.append("done: " + ", ".join(SHIELD_NAMES.get(name, name)
                                          for name in result.layers_done))
    return " · ".join(parts)


def quality_figures(result: PhotoResult) -> str:
    parts = []
    if result.psnr is not None:
        parts.append(f"PSNR {result.psnr:.2f} dB")
    if result.ssim is not None:
        parts.append(f"SSIM {result.ssim:.4f}")
    if result.linf is not None:
        # Measured on the 8-bit file, so a whole number of levels (float noise aside).
        parts.append(f"max change {result.linf:.0f}/255")
    face = face_change_figures(result.face_ssim, result.face_de_mean, result.face_de_p95,
                            result.face_jnd)
    if face:
        parts.append(face)
    return " · ".join(parts) or "no figures measured"


class FaceBadge(QLabel):
    """A face's scores: wraps like a label (a long line never widens the window) and clicks
    like a button (keyboard too: Space or Enter when focused)."""

    clicked = Signal()

    def __init__(self, text: str, parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self.setWordWrap(True)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

    def click(self) -> None:
        self.clicked.emit()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton and self.rect().contains(
                event.position().toPoint()):
            self.clicked.emit()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Space, Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.clicked.emit()
        else:
            super().keyPressEvent(event)


class CompareView(QWidget):
    """The viewer page: split canvas, difference toggle, score badges and quality figures.

    A group photo gets one outlined, numbered box per face on both halves and one badge per
    face; clicking a badge zooms onto that face with the divider through it, so the split
    compares the same face before and after."""

    face_selected = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.canvas = SplitImageView()
        self.diff_toggle = QCheckBox(f"Show difference (×{DIFF_GAIN:g})")
        self.diff_toggle.setAccessibleName("Show amplified difference")
        self.diff_toggle.toggled.connect(self._update_after)
        self.fit_button = QPushButton("Fit")
        self.fit_button.setAccessibleName("Fit to window")
        self.fit_button.clicked.connect(self.canvas.reset_view)
        self.actual_button = QPushButton("100%")
        self.actual_button.setAccessibleName("Actual pixels")
        self.actual_button.setToolTip("One photo pixel per screen pixel, around the chosen face")
        self.actual_button.clicked.connect(self.canvas.actual_pixels)
        self.title = QLabel("No photo selected")
        self.title.setStyleSheet("font-weight: 600;")
        self.scores = QVBoxLayout()
        self.scores.setSpacing(2)
        self.quality = QLabel()
        self.quality.setAccessibleName("Image quality")
        self.quality.setWordWrap(True)
        # What the verdicts can promise, under them whenever there are any.
        self.score_scope = QLabel(UNSEEN_MODELS_NOTE)
        self.score_scope.setAccessibleName("What the identity scores mean")
        self.score_scope.setWordWrap(True)
        # Darker than the figures' grey: this sentence is part of the result, not a detail.
        self.score_scope.setStyleSheet("color: #4b5563;")
        self.score_scope.hide()
        self.face_change = QLabel()
        self.face_change.setAccessibleName("Change on the face")
        self.face_change.setWordWrap(True)
        self.face_change.hide()
        self.figures_button = QToolButton()
        self.figures_button.setText("Figures")
        self.figures_button.setAccessibleName("Show quality figures")
        self.figures_button.setCheckable(True)
        self.figures_button.setAutoRaise(True)
        self.figures = QLabel()
        self.figures.setAccessibleName("Quality figures")
        self.figures.setStyleSheet("color: palette(mid);")
        self.figures.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.figures.hide()
        self.figures_button.toggled.connect(self.figures.setVisible)
        self.badges: list[QWidget] = []
        self.result: PhotoResult | None = None
        self._before: QImage | None = None
        self._after: QImage | None = None
        self._diff: QImage | None = None

        bar = QHBoxLayout()
        bar.addWidget(self.title, 1)
        bar.addWidget(self.diff_toggle)
        bar.addWidget(self.fit_button)
        bar.addWidget(self.actual_button)
        quality_row = QHBoxLayout()
        quality_row.addWidget(self.quality, 1)
        quality_row.addWidget(self.figures)
        quality_row.addWidget(self.figures_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(bar)
        layout.addWidget(self.canvas, 1)
        # A crowd (a class photo) gets a scrolling list of badges, never a squeezed photo.
        scores_box = QWidget()
        scores_box.setLayout(self.scores)
        self.scores_scroll = QScrollArea()
        self.scores_scroll.setWidget(scores_box)
        self.scores_scroll.setWidgetResizable(True)
        self.scores_scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scores_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scores_scroll.setMaximumHeight(200)
        layout.addWidget(self.scores_scroll)
        layout.addWidget(self.score_scope)
        layout.addWidget(self.face_change)
        layout.addLayout(quality_row)

    def show_result(self, source: Path, result: PhotoResult) -> None:
        """Load the clean photo and the written output and show the figures of ``result``.
        Every photo opens fitted: the previous photo's zoom means nothing for this one."""
        self._before = load_qimage(source)
        self._after = load_qimage(result.output)
        self._diff = None
        self.result = result
        self.title.setText(f"{Path(source).name} → {Path(result.output).name}")
        self.canvas.set_faces([(f.box, str(i + 1), face_colour(f))
                               for i, f in enumerate(result.per_face)])
        self._update_after()
        self.canvas.reset_view()
        self._show_scores(result)

    def clear(self) -> None:
        self._before = self._after = self._diff = None
        self.result = None
        self.title.setText("No photo selected")
        self.canvas.set_images(None, None)
        self.canvas.set_faces([])
        self._show_scores(None)

    def focus_face(self, index: int) -> None:
        self.canvas.focus_face(index)
        self.face_selected.emit(index)

    def _update_after(self) -> None:
        after = self._after
        if self.diff_toggle.isChecked() and self._before is not None and self._after is not None:
            if self._diff is None:
                try:
                    self._diff = difference_map(self._before, self._after)
                except ValueError as exc:
                    self.title.setText(f"Difference unavailable: {exc}")
            after = self._diff or self._after
        # The right half is no longer the protected photo: say what it shows.
        self.canvas.after_label = (f"Difference (×{DIFF_GAIN:g})" if after is self._diff
                                   and after is not None else "After")
        self.canvas.set_images(self._before, after)

    def _add_badge(self, widget: QWidget) -> None:
        self.scores.addWidget(widget)
        widget.show()  # at once: the height of the badge list is measured right after
        self.badges.append(widget)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._fit_scores()  # another width wraps the badges onto another number of lines

    def _show_scores(self, result: PhotoResult | None) -> None:
        for widget in self.badges:
            self.scores.removeWidget(widget)
            widget.hide()  # deleteLater waits for the event loop; never show a stale badge
            widget.deleteLater()
        self.badges = []
        if result is None:
            self.quality.setText("")
            self.figures.setText("")
            self.face_change.hide()
            self.score_scope.hide()
            self._fit_scores()
            return
        self.score_scope.setVisible(any(
            s.same_person is not None for f in result.scored_faces()
            for s in (*f.scores, *f.scores_after_sharing)))
        if len(result.per_face) > 1:
            self._face_badges(result)
        else:
            rows = [("", s) for s in result.scores]
            rows += [("After JPEG/resize: ", s) for s in result.scores_after_sharing]
            for prefix, score in rows:
                label = QLabel(prefix + badge_text(score), self)
                label.setAccessibleName(f"{prefix}identity score {score.encoder}")
                label.setStyleSheet(f"color: white; background: {badge_colour(score)}; "
                                    "border-radius: 6px; padding: 3px 8px;")
                self._add_badge(label)
            if not rows:
                self._add_badge(QLabel("No identity scores were measured for this photo.", self))
        self.quality.setText(change_words(result))
        self.figures.setText(quality_figures(result))
        self._show_face_change(result)
        self._fit_scores()

    def _show_face_change(self, result: PhotoResult) -> None:
        """How visible the protection is where it matters, in words; the figures behind them
        on hover (and under "Figures")."""
        words = face_change_words(result.face_ssim, result.face_de_mean, result.face_jnd)
        self.face_change.setText(words)
        self.face_change.setToolTip(
            face_change_figures(result.face_ssim, result.face_de_mean, result.face_de_p95,
                            result.face_jnd)
            + " (measured on each face widened 1.5×; a colour difference (ΔE2000) of about "
            "2.3 is just noticeable; SSIM 1 means unchanged)" if words else "")
        self.face_change.setVisible(bool(words))

    def _fit_scores(self) -> None:
        # All badges when they fit in 200 px, else 200 px and a scroll bar.
        width = max(200, self.scores_scroll.viewport().width())
        needed = (self.scores.heightForWidth(width) if self.scores.hasHeightForWidth()
                  else self.scores.sizeHint().height())
        self.scores_scroll.setFixedHeight(min(200, max(0, needed) + 2))

    def _face_badges(self, result: PhotoResult) -> None:
        hidden = sum(face_colour(f) == "#15803d" for f in result.per_face)
        intro = QLabel(f"{len(result.per_face)} faces: {hidden} read as a different person by "
                       "every identity model. Click a face to compare it before and after.",
                       self)
        intro.setWordWrap(True)
        self._add_badge(intro)
        for i, face in enumerate(result.per_face):
            badge = FaceBadge(face_badge_text(i + 1, face), self)
            badge.setAccessibleName(f"Face {i + 1} identity scores")
            badge.setToolTip("Compare this face before and after")
            badge.setStyleSheet(f"color: white; background: {face_colour(face)}; "
                                "border-radius: 6px; padding: 3px 8px;")
            badge.clicked.connect(lambda i=i: self.focus_face(i))
            self._add_badge(badge)
