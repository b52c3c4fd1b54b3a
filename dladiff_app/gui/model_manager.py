"""Model manager: what each model is for, whether it is here, its size and license; download
(with progress and cancel, after the license is accepted) or point to a local copy."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QSize, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.services import ModelRow, ModelService
from dladiff_app.gui.engine_thread import EngineThread
from dladiff_app.gui.wording import counted


def format_size(size: int | None) -> str:
    if size is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size = size / 1024  # type: ignore[assignment]
    return f"{size} B"


def default_size(screen: QSize | None) -> tuple[int, int]:
    """The dialog's first size: wide enough for "Used for" to wrap into a few lines and about
    eight models to show, within 90% of the screen (never bigger than it, so never shown
    filling it)."""
    width, height = 1040, 700
    if screen is None or screen.isEmpty():
        return width, height
    return min(width, int(screen.width() * 0.9)), min(height, int(screen.height() * 0.9))


def status_text(row: ModelRow) -> str:
    if not row.present:
        return "Missing"
    return {"local": "Ready (your folder)", "package": "Ready (bundled)"}.get(row.source, "Ready")


class _Relay(QObject):
    """Carries download progress from the engine thread to the UI thread (queued signal)."""

    progress = Signal(object, object)


class ModelManagerDialog(QDialog):
    """Non-modal: ``show()`` it. All service calls run on the engine thread."""

    COLUMNS = ("Model", "Used for", "Status", "Size", "License")
    models_changed = Signal(list)

    def __init__(self, models: ModelService, engine: EngineThread,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Models")
        self._models, self._engine = models, engine
        self.rows: list[ModelRow] = []
        self._cancel: CancelToken | None = None
        self._relay = _Relay(self)
        self._relay.progress.connect(self._on_progress)

        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setAccessibleName("Models")
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        # Status and size are a word or two; the model and its licence get a fixed share (set in
        # _fit_columns) and wrap; what the model is used for takes the rest.
        for column, mode in ((0, QHeaderView.ResizeMode.Interactive),
                             (1, QHeaderView.ResizeMode.Stretch),
                             (2, QHeaderView.ResizeMode.ResizeToContents),
                             (3, QHeaderView.ResizeMode.ResizeToContents),
                             (4, QHeaderView.ResizeMode.Interactive)):
            header.setSectionResizeMode(column, mode)
        header.setStretchLastSection(False)
        self.table.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.table.verticalHeader().hide()
        self.table.setWordWrap(True)
        self.table.itemSelectionChanged.connect(self._sync)
        self.table.installEventFilter(self)
        self.license = QPlainTextEdit()
        self.license.setAccessibleName("License text")
        self.license.setReadOnly(True)
        self.license.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        # Tall enough for a whole licence summary; the splitter gives it more on request.
        self.license.setMinimumHeight(110)
        self.accept_license = QCheckBox("I accept this model's license")
        self.accept_license.setAccessibleName("Accept license")
        self.accept_license.toggled.connect(self._sync)
        self.download_button = QPushButton("Download")
        self.download_button.setAccessibleName("Download model")
        self.download_button.clicked.connect(self.download_selected)
        self.cancel_button = QPushButton("Cancel download")
        self.cancel_button.setAccessibleName("Cancel download")
        self.cancel_button.clicked.connect(self.cancel_download)
        self.local_button = QPushButton("Use a local folder…")
        self.local_button.setAccessibleName("Use a local folder")
        self.local_button.clicked.connect(self._choose_local)
        self.progress = QProgressBar()
        self.progress.setAccessibleName("Download progress")
        self.progress.hide()
        self.summary = QLabel("Loading the model list…")
        self.message = QLabel()
        self.message.setWordWrap(True)

        buttons = QHBoxLayout()
        buttons.addWidget(self.download_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.local_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        license_box = QWidget()
        license_layout = QVBoxLayout(license_box)
        license_layout.setContentsMargins(0, 0, 0, 0)
        license_layout.addWidget(QLabel("License"))
        license_layout.addWidget(self.license, 1)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.table)
        split.addWidget(license_box)
        split.setChildrenCollapsible(False)
        split.setSizes([460, 120])
        layout.addWidget(self.summary)
        layout.addWidget(split, 1)
        layout.addWidget(self.accept_license)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.message)
        screen = self.screen()
        self.resize(*default_size(screen.availableGeometry().size() if screen else None))
        self.refresh()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        # The table's own resize, not the dialog's: the layout sizes the table after the
        # dialog's resize event, and widths taken then are the old ones.
        if watched is self.table and event.type() == QEvent.Type.Resize:
            self._fit_columns()
        return super().eventFilter(watched, event)

    def _fit_columns(self) -> None:
        """Model and licence columns a share of the width left by status and size (never
        wider than their text), "Used for" the rest; then rows as tall as their wrapped text."""
        rest = self.table.viewport().width() - sum(self.table.columnWidth(c) for c in (2, 3))
        for column, share in ((0, 0.26), (4, 0.22)):
            self.table.resizeColumnToContents(column)
            self.table.setColumnWidth(column, max(120, min(self.table.columnWidth(column),
                                                           int(rest * share))))
        self.table.resizeRowsToContents()

    # ------------------------------------------------------------------ list
    def refresh(self) -> None:
        self._engine.submit(self._models.list_models, self._show_rows, self._show_error)

    def _show_rows(self, rows: object) -> None:
        selected = self.selected_row()
        self.rows = list(rows)  # type: ignore[call-overload]
        self.table.setRowCount(len(self.rows))
        for r, row in enumerate(self.rows):
            cells = (row.title, row.purpose, status_text(row), format_size(row.size_bytes),
                     row.license_name)
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(row.path or text)
                self.table.setItem(r, c, item)
        self._fit_columns()
        missing = sum(not r.present for r in self.rows)
        self.summary.setText(f"{counted(missing, 'model')} missing." if missing else
                             "All models are ready.")
        if selected is None and self.rows:
            # Show a license straight away: the first model still missing, else the first one.
            selected = next((r for r in self.rows if not r.present), self.rows[0])
        if selected is not None:
            self.select(selected.id)
        self.models_changed.emit(self.rows)
        self._sync()

    def select(self, model_id: str) -> None:
        for r, row in enumerate(self.rows):
            if row.id == model_id:
                self.table.selectRow(r)

    def selected_row(self) -> ModelRow | None:
        indexes = self.table.selectionModel().selectedRows()
        if not indexes or indexes[0].row() >= len(self.rows):
            return None
        return self.rows[indexes[0].row()]

    def _sync(self) -> None:
        row = self.selected_row()
        busy = self._cancel is not None
        if row is not None and not busy:
            self.license.setPlainText(f"{row.license_name}\n\n{row.license_text}")
        self.download_button.setEnabled(row is not None and not row.present and not busy
                                        and self.accept_license.isChecked())
        self.local_button.setEnabled(row is not None and not busy)
        self.cancel_button.setEnabled(busy)

    # ------------------------------------------------------------------ actions
    def download_selected(self) -> None:
        row = self.selected_row()
        if row is None or self._cancel is not None:
            return
        token = self._cancel = CancelToken()
        self.progress.setRange(0, 0)
        self.progress.show()
        self.message.setText(f"Downloading {row.title}…")
        relay, models, model_id = self._relay, self._models, row.id

        def work() -> None:
            models.download(model_id, lambda done, total: relay.progress.emit(done, total), token)

        self._engine.submit(work, lambda _r: self._download_ended(row, None),
                            lambda msg: self._download_ended(row, msg), cancel=token)
        self._sync()

    def cancel_download(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()
            self.message.setText("Cancelling the download…")

    def _on_progress(self, done: object, total: object) -> None:
        if isinstance(total, int) and total > 0 and isinstance(done, int):
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * done / total))
            self.progress.setFormat(f"{format_size(done)} of {format_size(total)}")

    def _download_ended(self, row: ModelRow, error: str | None) -> None:
        cancelled = self._cancel is not None and self._cancel.cancelled
        self._cancel = None
        self.progress.hide()
        if error is None:
            self.message.setText(f"{row.title} is ready.")
        elif cancelled:
            self.message.setText(f"Download of {row.title} cancelled.")
        else:
            self.message.setText(f"Download of {row.title} failed: {error}")
        self.refresh()
        self._sync()

    def _choose_local(self) -> None:
        row = self.selected_row()
        if row is None:
            return
        folder = QFileDialog.getExistingDirectory(self, f"Folder with {row.title}")
        if folder:
            self.use_local(row.id, folder)

    def use_local(self, model_id: str, folder: str) -> None:
        models = self._models
        self._engine.submit(lambda: models.use_local(model_id, folder),
                            lambda _r: self.refresh(), self._show_error)

    def _show_error(self, message: str) -> None:
        self.message.setText(message)
