"""Non-blocking notifications: a strip of dismissable banners instead of modal message boxes."""

from __future__ import annotations

from enum import Enum

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QToolButton, QVBoxLayout, QWidget

MAX_VISIBLE = 4
INFO_SECONDS = 8


class Level(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


_STYLE = {
    Level.INFO: ("#eff6ff", "#1e3a8a", "#bfdbfe"),
    Level.WARNING: ("#fffbeb", "#78350f", "#fde68a"),
    Level.ERROR: ("#fef2f2", "#7f1d1d", "#fecaca"),
}


class Notification(QFrame):
    def __init__(self, text: str, level: Level, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.text, self.level = text, level
        bg, fg, border = _STYLE[level]
        self.setObjectName("notification")
        self.setStyleSheet(f"#notification {{ background: {bg}; border: 1px solid {border};"
                           f" border-radius: 6px; }} QLabel {{ color: {fg}; }}")
        label = QLabel(text)
        label.setWordWrap(True)
        label.setAccessibleName(f"{level.value} notification")
        close = QToolButton()
        close.setText("✕")
        close.setAccessibleName("Dismiss notification")
        close.setAutoRaise(True)
        close.clicked.connect(self.dismiss)
        row = QHBoxLayout(self)
        row.setContentsMargins(10, 6, 6, 6)
        row.addWidget(label, 1)
        row.addWidget(close)

    dismissed = False

    def dismiss(self) -> None:
        self.dismissed = True
        self.hide()
        self.deleteLater()


class NotificationArea(QWidget):
    """Newest at the bottom; errors stay until dismissed, info fades after a few seconds.
    ``history`` keeps every message shown (for the log and for tests)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Notifications")
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(4)
        self.history: list[tuple[Level, str]] = []

    def notify(self, text: str, level: Level = Level.INFO) -> Notification:
        self.history.append((level, text))
        note = Notification(text, level, self)
        self._layout.addWidget(note)
        note.show()
        visible = self.visible_notes()
        for old in visible[:-MAX_VISIBLE]:
            old.dismiss()
        if level is Level.INFO:
            QTimer.singleShot(INFO_SECONDS * 1000, note, note.dismiss)
        return note

    def error(self, text: str) -> Notification:
        return self.notify(text, Level.ERROR)

    def warning(self, text: str) -> Notification:
        return self.notify(text, Level.WARNING)

    def visible_notes(self) -> list[Notification]:
        return [w for w in self.findChildren(Notification) if not w.dismissed]

    def visible_texts(self) -> list[str]:
        return [n.text for n in self.visible_notes()]
