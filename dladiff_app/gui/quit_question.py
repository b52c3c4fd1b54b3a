"""The question asked when the window is closed while photos are being protected."""

from __future__ import annotations

from PySide6.QtWidgets import QMessageBox, QWidget

CANCEL_AND_QUIT = "Cancel and quit"
KEEP_RUNNING = "Keep running"


def ask_quit_during_run(parent: QWidget, what: str) -> bool:
    """Ask whether to stop the run ``what`` ("2 of 5 photos left") and quit. True: cancel and
    quit; False (also on Escape or closing the question): keep the window and the run going.
    Modal: the run goes on behind it."""
    box = QMessageBox(parent)
    box.setObjectName("quit-during-run")
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle("Protection still running")
    box.setText(f"Photos are still being protected ({what}).")
    box.setInformativeText("Quitting cancels the run after its current step. Photos already "
                           "finished are kept, and the next Protect picks up the rest.")
    quit_button = box.addButton(CANCEL_AND_QUIT, QMessageBox.ButtonRole.DestructiveRole)
    keep = box.addButton(KEEP_RUNNING, QMessageBox.ButtonRole.RejectRole)
    box.setDefaultButton(keep)
    box.setEscapeButton(keep)
    box.exec()
    return box.clickedButton() is quit_button
