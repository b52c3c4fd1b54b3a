"""Settings: device, model folder, default output folder and preset."""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from dladiff_app.core.services import DeviceSummary
from dladiff_app.core.settings import Settings

DEVICES = (("auto", "Automatic (best available)"), ("cuda", "NVIDIA GPU (CUDA)"),
           ("mps", "Apple GPU (MPS)"), ("cpu", "CPU (slow)"))
PRESET_NAMES = (("low", "Low"), ("medium", "Medium"), ("high", "High"))


def offered_devices(device: DeviceSummary | None, current: str) -> list[tuple[str, str]]:
    """Automatic and CPU always; a GPU only where this machine has one (the engine's list), or
    when the saved setting names it (so it is shown, marked, instead of silently dropped)."""
    present = set(device.available) if device is not None else {"cpu"}
    out = []
    for key, label in DEVICES:
        if key in ("auto", "cpu") or key in present:
            out.append((key, label))
        elif key == current:
            out.append((key, f"{label}: not found on this computer"))
    return out


def _folder_row(edit: QLineEdit, parent: QWidget, caption: str) -> QHBoxLayout:
    button = QPushButton("Choose…")
    button.setAccessibleName(f"Choose {caption.lower()}")

    def browse() -> None:
        folder = QFileDialog.getExistingDirectory(parent, caption, edit.text())
        if folder:
            edit.setText(folder)

    button.clicked.connect(browse)
    row = QHBoxLayout()
    row.addWidget(edit, 1)
    row.addWidget(button)
    return row


class SettingsDialog(QDialog):
    def __init__(self, settings: Settings, device: DeviceSummary | None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.setMinimumWidth(600)  # room for full folder paths and the placeholder texts
        self._settings = settings
        self.device = QComboBox()
        self.device.setAccessibleName("Device")
        current = settings.device.split(":")[0]
        for key, label in offered_devices(device, current):
            self.device.addItem(label, key)
        idx = self.device.findData(current)
        self.device.setCurrentIndex(max(0, idx))
        self.device_note = QLabel(device.reason or device.name if device else "")
        self.device_note.setWordWrap(True)
        self.cache_dir = QLineEdit(settings.cache_dir or "")
        self.cache_dir.setAccessibleName("Model folder")
        self.cache_dir.setPlaceholderText("Default (your user cache folder)")
        self.output = QLineEdit(settings.default_output or "")
        self.output.setAccessibleName("Default output folder")
        self.output.setPlaceholderText("Default (Pictures/DLADiff protected)")
        self.preset = QComboBox()
        self.preset.setAccessibleName("Default preset")
        for key, label in PRESET_NAMES:
            self.preset.addItem(label, key)
        self.preset.setCurrentIndex(max(0, self.preset.findData(settings.default_preset)))

        form = QFormLayout()
        form.addRow("Device", self.device)
        form.addRow("", self.device_note)
        form.addRow("Model folder", _folder_row(self.cache_dir, self, "Model folder"))
        form.addRow("Save protected photos to", _folder_row(self.output, self, "Output folder"))
        form.addRow("Default strength", self.preset)
        note = QLabel("A new model folder takes effect at the next start.")
        note.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(buttons)

    def result_settings(self) -> Settings:
        """A copy of the settings with this dialog's choices."""
        return replace(self._settings, device=self.device.currentData(),
                       cache_dir=self.cache_dir.text().strip() or None,
                       default_output=self.output.text().strip() or None,
                       default_preset=self.preset.currentData())
