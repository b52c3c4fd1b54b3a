"""Export options: where protected photos go and how they are written (format, quality,
metadata, report). The protect job writes its outputs with these options (same code as the CLI);
an already-protected album can also be re-encoded into another folder."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from dladiff_app.core.jobs import ExportOptions, OutputFormat

_FORMATS = {OutputFormat.PNG: "PNG (lossless, recommended)", OutputFormat.JPEG: "JPEG",
            OutputFormat.WEBP: "WebP"}


class ExportDialog(QDialog):
    """Pick the destination folder and the :class:`ExportOptions`."""

    def __init__(self, folder: Path | None, options: ExportOptions, *, title: str,
                 intro: str, action: str = "OK", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setMinimumWidth(560)  # room for a full folder path and the placeholder text
        self.folder_edit = QLineEdit(str(folder) if folder else "")
        self.folder_edit.setAccessibleName("Destination folder")
        self.folder_edit.setPlaceholderText("Choose a folder for the protected photos")
        browse = QPushButton("Choose…")
        browse.setAccessibleName("Choose destination folder")
        browse.clicked.connect(self._browse)
        self.format = QComboBox()
        self.format.setAccessibleName("File format")
        for fmt, label in _FORMATS.items():
            self.format.addItem(label, fmt)
        self.format.setCurrentIndex(self.format.findData(options.format))
        self.quality = QSpinBox()
        self.quality.setAccessibleName("JPEG quality")
        self.quality.setRange(1, 100)
        self.quality.setValue(options.quality)
        self.metadata = QCheckBox("Keep photo metadata (camera, date; never location)")
        self.metadata.setAccessibleName("Keep metadata")
        self.metadata.setChecked(options.keep_metadata)
        self.report = QCheckBox("Write a report (manifest.json and report.html per album)")
        self.report.setAccessibleName("Write report")
        self.report.setChecked(options.write_report)
        self.lossy_note = QLabel("Lossy formats weaken the protection a little; the scores "
                                 "are measured on the file as written.")
        self.lossy_note.setWordWrap(True)
        self.format.currentIndexChanged.connect(self._sync)

        row = QHBoxLayout()
        row.addWidget(self.folder_edit, 1)
        row.addWidget(browse)
        form = QFormLayout()
        form.addRow("Folder", row)
        form.addRow("Format", self.format)
        form.addRow("Quality", self.quality)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        self.ok_button = buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok_button.setText(action)  # a verb says what the button does
        self.ok_button.setAccessibleName(action)
        self.folder_edit.textChanged.connect(self._sync)
        intro_label = QLabel(intro)
        intro_label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(intro_label)
        layout.addLayout(form)
        layout.addWidget(self.metadata)
        layout.addWidget(self.report)
        layout.addWidget(self.lossy_note)
        layout.addWidget(buttons)
        self._sync()

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a folder", self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)

    def _format(self) -> OutputFormat:
        # Qt hands a str-based enum back as a plain str: rebuild the enum member.
        return OutputFormat(self.format.currentData())

    def _sync(self) -> None:
        lossy = self._format() is not OutputFormat.PNG
        self.quality.setEnabled(lossy)
        self.lossy_note.setVisible(lossy)
        self.ok_button.setEnabled(bool(self.folder_edit.text().strip()))

    def folder(self) -> Path:
        return Path(self.folder_edit.text().strip()).expanduser()

    def options(self) -> ExportOptions:
        return ExportOptions(format=self._format(), quality=self.quality.value(),
                             keep_metadata=self.metadata.isChecked(),
                             write_report=self.report.isChecked())
