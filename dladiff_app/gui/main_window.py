"""The main window: batch list, strength panel, run control, before/after viewer."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer, QUrl
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDesktopServices,
    QDragEnterEvent,
    QDropEvent,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QStackedWidget,
    QTabWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from dladiff_app.core import events as ev
from dladiff_app.core.jobs import ExportOptions, OutputFormat, ProtectJob
from dladiff_app.core.presets import PRESETS, Layers
from dladiff_app.core.services import DeviceSummary, JobSummary, ModelRow
from dladiff_app.core.settings import Settings, save_settings
from dladiff_app.core.verdict import AlbumVerdict, report_for, verdicts
from dladiff_app.gui.batch_list import FINISHED, BatchList, PhotoEntry, Status, run_counts
from dladiff_app.gui.compare_view import CompareView
from dladiff_app.gui.engine_thread import EngineThread
from dladiff_app.gui.export_dialog import ExportDialog
from dladiff_app.gui.face_preview import FacePreviewDialog
from dladiff_app.gui.model_manager import ModelManagerDialog
from dladiff_app.gui.notifications import NotificationArea
from dladiff_app.gui.quit_question import ask_quit_during_run
from dladiff_app.gui.services import Services
from dladiff_app.gui.settings_dialog import SettingsDialog
from dladiff_app.gui.strength_panel import StrengthPanel, format_duration
from dladiff_app.gui.wording import counted, was_were

STAGES = {"load": "Loading", "prior": "Learning the face", "layer1": "Fine-tuning shield",
          "layer2": "Zero-shot shield", "polish": "Polishing", "score": "Measuring",
          "save": "Saving"}


def default_output_dir() -> Path:
    pictures = Path.home() / "Pictures"
    return (pictures if pictures.is_dir() else Path.home()) / "DLADiff protected"


class MainWindow(QMainWindow):
    def __init__(self, services: Services, settings: Settings | None = None,
                 settings_path: Path | None = None) -> None:
        super().__init__()
        self.services = services
        self.settings = settings if settings is not None else Settings()
        self.settings_path = settings_path
        self.setWindowTitle("DLADiff: protect your photos")
        self.setAcceptDrops(True)
        self.resize(1100, 720)
        self.engine = EngineThread(services.protect, self)
        self.engine.engine_event.connect(self._on_event)
        self.engine.job_finished.connect(self._on_job_finished)
        self.engine.job_crashed.connect(self._on_job_crashed)
        self.output_dir = Path(self.settings.default_output or default_output_dir())
        fmt = OutputFormat(self.settings.output_format) if self.settings.output_format in \
            {f.value for f in OutputFormat} else OutputFormat.PNG
        self.export_options = ExportOptions(format=fmt, quality=self.settings.jpeg_quality,
                                            keep_metadata=self.settings.keep_metadata,
                                            export_unprotected=self.settings.export_unprotected)
        self.device: DeviceSummary | None = None
        self.model_rows: list[ModelRow] = []
        self.model_manager: ModelManagerDialog | None = None
        self.help_dialog: QWidget | None = None
        self.last_summary: JobSummary | None = None
        self.last_export: list[Path] = []
        self._job_paths: list[Path] = []
        self._job_started = 0.0
        self._faces: dict[Path, int | None] = {}  # faces the engine's detector found per photo
        self._sd_missing: bool | None = None       # None until the model list arrived
        self.album_verdicts: list[AlbumVerdict] = []
        self._estimate_serial = 0
        self._estimate_timer = QTimer(self)
        self._estimate_timer.setSingleShot(True)
        self._estimate_timer.setInterval(150)
        self._estimate_timer.timeout.connect(self._request_estimate)

        self._build_ui()
        self._build_actions()
        self._restore_geometry()
        self.strength.set_preset(self.settings.default_preset
                                 if self.settings.default_preset in PRESETS else "medium")
        if self.settings.offline_zeroshot:
            self.strength.set_layers(Layers.ZEROSHOT)  # the offline choice, remembered
        if not self.settings.first_run_done:
            # Shown at once (no layout jump when the model list arrives seconds later).
            self.first_run_banner.show()
        self._sync_controls()
        self.engine.submit(lambda: services.device.describe(self.settings.device),
                           self._on_device, self.notes.error)
        self.engine.submit(services.models.list_models, self._on_models, self.notes.error)

    # ------------------------------------------------------------------ layout
    def _build_ui(self) -> None:
        self.batch = BatchList()
        self.batch.changed.connect(self._on_batch_changed)
        self.batch.itemDoubleClicked.connect(lambda *_: self.show_selected_in_viewer())
        self.batch.itemSelectionChanged.connect(self._sync_controls)
        empty = QWidget()
        hint = QLabel("Drop photos or folders here")
        hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        hint.setStyleSheet("font-size: 20px; font-weight: 600;")
        sub = QLabel("Each folder becomes an album: photos of one person, protected together.\n"
                     "Nothing leaves this computer.")
        sub.setAlignment(Qt.AlignmentFlag.AlignCenter)
        sub.setStyleSheet("color: palette(mid);")
        add = QPushButton("Add photos…")
        add.setAccessibleName("Add photos")
        add.clicked.connect(self.add_files_dialog)
        add_folder = QPushButton("Add a folder…")
        add_folder.setAccessibleName("Add a folder")
        add_folder.clicked.connect(self.add_folder_dialog)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(add)
        buttons.addWidget(add_folder)
        buttons.addStretch(1)
        box = QVBoxLayout(empty)
        box.addStretch(1)
        box.addWidget(hint)
        box.addWidget(sub)
        box.addSpacing(12)
        box.addLayout(buttons)
        box.addStretch(2)
        empty.setObjectName("emptyState")
        empty.setStyleSheet("#emptyState { border: 2px dashed palette(mid); border-radius: 12px; }")
        self.empty_hint = hint
        self.list_stack = QStackedWidget()
        self.list_stack.addWidget(empty)
        self.list_stack.addWidget(self.batch)

        self.strength = StrengthPanel()
        self.strength.changed.connect(self._schedule_estimate)
        self.strength.preview_requested.connect(self.preview_face)
        self.preview_dialog: FacePreviewDialog | None = None
        self.output_label = QLabel()
        self.output_label.setWordWrap(True)
        self.output_button = QPushButton("Output options…")
        self.output_button.setAccessibleName("Output options")
        self.output_button.clicked.connect(self.choose_output)
        self.protect_button = QPushButton("Protect")
        self.protect_button.setAccessibleName("Protect")
        self.protect_button.setDefault(True)
        self.protect_button.setMinimumHeight(40)
        self.protect_button.setStyleSheet(
            "QPushButton { background: #2563eb; color: white; font-weight: 600;"
            " border-radius: 6px; padding: 6px 18px; }"
            " QPushButton:disabled { background: #93c5fd; }")
        self.protect_button.clicked.connect(self.protect)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setAccessibleName("Cancel")
        self.cancel_button.setMinimumHeight(40)
        self.cancel_button.clicked.connect(self.cancel)
        self.photo_progress = QProgressBar()
        self.photo_progress.setAccessibleName("Current photo progress")
        self.photo_progress.setFormat("%p%")
        self.batch_progress = QProgressBar()
        self.batch_progress.setAccessibleName("Batch progress")
        self.batch_progress.setRange(0, 1000)
        self.progress_label = QLabel("Ready.")
        self.progress_label.setAccessibleName("Progress")
        self.progress_label.setWordWrap(True)
        self.finished_panel = QFrame()
        self.finished_panel.setObjectName("finished")
        self.finished_panel.setAccessibleName("Results")
        self.finished_panel.setStyleSheet("#finished { background: palette(base); border: 1px "
                                          "solid palette(mid); border-radius: 8px; }")
        self.finished_rows = QVBoxLayout(self.finished_panel)
        self.finished_panel.hide()
        self.verdict_labels: list[QLabel] = []
        self.open_folder_buttons: list[QPushButton] = []
        self.open_report_buttons: list[QPushButton] = []

        run = QHBoxLayout()
        run.addWidget(self.protect_button, 2)
        run.addWidget(self.cancel_button, 1)
        side = QVBoxLayout()
        side.addWidget(self.strength)
        out_row = QHBoxLayout()
        out_row.addWidget(self.output_label, 1)
        out_row.addWidget(self.output_button)
        side.addLayout(out_row)
        side.addStretch(1)
        side.addLayout(run)
        side.addWidget(QLabel("Current photo"))
        side.addWidget(self.photo_progress)
        side.addWidget(QLabel("All photos"))
        side.addWidget(self.batch_progress)
        side.addWidget(self.progress_label)
        side.addWidget(self.finished_panel)
        side_widget = QWidget()
        side_widget.setLayout(side)
        side_widget.setMinimumWidth(360)
        # On a small screen the panel scrolls instead of forcing the window taller.
        side_scroll = QScrollArea()
        side_scroll.setWidget(side_widget)
        side_scroll.setWidgetResizable(True)
        side_scroll.setFrameShape(QFrame.Shape.NoFrame)
        side_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        side_scroll.setMinimumWidth(380)

        splitter = QSplitter()
        splitter.addWidget(self.list_stack)
        splitter.addWidget(side_scroll)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        self.viewer = CompareView()
        self.tabs = QTabWidget()
        self.tabs.setAccessibleName("Pages")
        self.tabs.addTab(splitter, "Photos")
        self.tabs.addTab(self.viewer, "Before / after")

        self.first_run_banner = self._build_first_run_banner()
        self.notes = NotificationArea()
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(10, 6, 10, 10)
        layout.addWidget(self.first_run_banner)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(self.notes)
        self.setCentralWidget(central)
        # The run's progress also shows on the Before/after page (the status bar is on both).
        self.status_progress = QProgressBar()
        self.status_progress.setAccessibleName("Protection progress")
        self.status_progress.setRange(0, 1000)
        self.status_progress.setMaximumWidth(260)
        self.status_progress.hide()
        self.statusBar().addPermanentWidget(self.status_progress)
        self._update_output_label()

    def _build_first_run_banner(self) -> QFrame:
        banner = QFrame()
        banner.setObjectName("firstRun")
        banner.setStyleSheet("#firstRun { background: #eff6ff; border: 1px solid #bfdbfe;"
                             " border-radius: 8px; }")
        self.first_run_text = QLabel(
            "Welcome! You can protect photos right away, offline, against tools that copy a "
            "face from one photo. To also protect against fine-tuning (DreamBooth/LoRA), get "
            "Stable Diffusion under Models (a large download).")
        self.first_run_text.setWordWrap(True)
        self.first_run_download = QPushButton("Get the models…")
        self.first_run_download.setAccessibleName("Open the model manager")
        self.first_run_download.clicked.connect(lambda: self._finish_first_run(download=True))
        self.first_run_offline = QPushButton("Start offline")
        self.first_run_offline.setAccessibleName("Use offline zero-shot mode")
        self.first_run_offline.setToolTip("Protect with the zero-shot shield only; it works "
                                          "without any download. Remembered for next time.")
        self.first_run_offline.clicked.connect(lambda: self._finish_first_run(download=False))
        row = QHBoxLayout(banner)
        row.addWidget(self.first_run_text, 1)
        row.addWidget(self.first_run_download)
        row.addWidget(self.first_run_offline)
        banner.hide()
        return banner

    def _build_actions(self) -> None:
        bar = QToolBar("Main")
        bar.setMovable(False)
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.addToolBar(bar)

        def action(text: str, slot: object, shortcut: QKeySequence | QKeySequence.StandardKey | str | None = None) -> QAction:
            act = QAction(text, self)
            if shortcut is not None:
                act.setShortcut(QKeySequence(shortcut))
                act.setToolTip(f"{text} ({QKeySequence(shortcut).toString()})")
            act.triggered.connect(slot)
            self.addAction(act)
            return act

        self.open_action = action("Add photos…", self.add_files_dialog, QKeySequence.StandardKey.Open)
        self.folder_action = action("Add folder…", self.add_folder_dialog, "Ctrl+Shift+O")
        self.remove_action = action("Remove", self.remove_selected, QKeySequence.StandardKey.Delete)
        self.clear_action = action("Clear", self.clear_list)
        self.protect_action = action("Protect", self.protect, "Ctrl+Return")
        self.cancel_action = action("Cancel", self.cancel, "Esc")
        self.export_action = action("Export…", self.export_album, "Ctrl+E")
        self.protect_again_action = action("Protect again at this strength", self.protect_again)
        self.models_action = action("Models…", self.open_model_manager)
        self.settings_action = action("Settings…", self.open_settings, QKeySequence.StandardKey.Preferences)
        self.help_action = action("Help", self.open_help, QKeySequence.StandardKey.HelpContents)
        for act in (self.open_action, self.folder_action, self.remove_action, self.clear_action):
            bar.addAction(act)
        bar.addSeparator()
        bar.addAction(self.export_action)
        bar.addAction(self.protect_again_action)
        spacer = QWidget()
        spacer.setSizePolicy(spacer.sizePolicy().horizontalPolicy().Expanding,
                             spacer.sizePolicy().verticalPolicy())
        bar.addWidget(spacer)
        bar.addAction(self.models_action)
        bar.addAction(self.settings_action)
        bar.addAction(self.help_action)
        for act in bar.actions():
            button = bar.widgetForAction(act)
            if button is not None and act.text():
                button.setAccessibleName(act.text().rstrip("…"))

    # ------------------------------------------------------------------ adding photos
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [Path(u.toLocalFile()) for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            self.add_paths(paths)
            event.acceptProposedAction()

    def add_paths(self, paths: list[Path]) -> list[Path]:
        added = self.batch.add_paths(paths)
        for path in added:
            entry = self.batch.entry(path)
            if entry.status is Status.SKIPPED:
                self.notes.warning(f"{path.name}: {entry.detail}")
        self._show_earlier_results(added)
        if paths and not added:
            self.notes.notify("Those photos are already in the list (or the folder has none).")
        return added

    def _show_earlier_results(self, paths: list[Path]) -> None:
        """Photos the output folder's journal says were protected before are listed as
        protected, with their result (viewer and export work) instead of waiting to be redone."""
        from dladiff_app.core.errors import DladiffError
        from dladiff_app.core.journal import Journal
        from dladiff_app.core.results import result_from_record

        try:
            earlier = Journal(self.output_dir).results_by_source()
        except DladiffError:
            return
        for path in paths:
            entries = earlier.get(str(path))
            if not entries or self.batch.entry(path).status is not Status.QUEUED:
                continue
            latest = entries[-1]
            try:
                result = result_from_record({**(latest.result or {}), "output": latest.output})
            except (KeyError, TypeError, ValueError):
                continue
            preset = (latest.settings or {}).get("preset", "?")
            self.batch.set_result(path, result, f"protected earlier (preset {preset})")
        self._sync_controls()

    def protect_again(self) -> None:
        """Protect the selected finished photos (all finished ones when none is selected) again
        at the strength now chosen; earlier files are kept, the new one gets its own name."""
        if self.engine.job_running:
            return
        chosen = self.batch.selected_entries() or self.batch.entries()
        if self.batch.protect_again(chosen):
            self.protect()

    def add_files_dialog(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self, "Add photos", str(Path.home()),
            "Photos (*.jpg *.jpeg *.png *.webp *.bmp *.tif *.tiff *.avif);;All files (*)")
        self.add_paths([Path(f) for f in files])

    def add_folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a folder of photos", str(Path.home()))
        if folder:
            self.add_paths([Path(folder)])

    def remove_selected(self) -> None:
        if not self.engine.job_running:
            self.batch.remove_selected()

    def clear_list(self) -> None:
        if not self.engine.job_running:
            self.batch.clear_all()
            self.viewer.clear()

    def _on_batch_changed(self) -> None:
        self.list_stack.setCurrentIndex(0 if self.batch.is_empty() else 1)
        self._sync_controls()
        self._schedule_estimate()

    # ------------------------------------------------------------------ estimate
    def _schedule_estimate(self) -> None:
        self._sync_controls()
        self._estimate_timer.start()

    def _request_estimate(self) -> None:
        self._estimate_serial += 1  # answers to older requests are ignored
        entries = self.batch.runnable_entries()
        settings = self.strength.settings()
        device = self.device.name if self.device else "this computer"
        if not entries or settings is None:
            self.strength.set_estimate(None, device, 0, listed=not self.batch.is_empty())
            return
        serial, n, mp = self._estimate_serial, len(entries), self.batch.megapixels(entries)
        protect = self.services.protect
        paths = [e.path for e in entries]
        count = getattr(protect, "count_faces", None)
        uncounted = [p for p in paths if p not in self._faces]
        if count is not None and uncounted:
            # Faces first: the zero-shot shield's time is per face, not per photo.
            self.strength.set_estimate(None, device, n)

            def counted_faces(found: object) -> None:
                for path, faces in zip(uncounted, list(found), strict=False):  # type: ignore[call-overload]
                    self._faces[path] = faces
                if serial == self._estimate_serial:
                    self._request_estimate()

            self.engine.submit(lambda: count(uncounted), counted_faces, self.notes.error)
            return
        faces = [self._faces.get(p) or 0 for p in paths] if count is not None else None
        total_faces = sum(faces) if faces is not None else None
        self.strength.set_estimate(None, device, n, faces=total_faces)

        def done(seconds: object) -> None:
            if serial == self._estimate_serial and isinstance(seconds, (int, float)):
                name = self.device.name if self.device else "this computer"
                self.strength.set_estimate(float(seconds), name, n, faces=total_faces)

        def estimate() -> float:
            if faces is None:
                return protect.estimate_seconds(n, settings, mp)
            return protect.estimate_seconds(n, settings, mp, faces=faces)

        self.engine.submit(estimate, done, self.notes.error)

    # ------------------------------------------------------------------ run control
    def _sync_controls(self) -> None:
        running = self.engine.job_running
        can_run = bool(self.batch.runnable_entries()) and self.strength.settings() is not None
        self.protect_button.setEnabled(can_run and not running)
        self.protect_action.setEnabled(can_run and not running)
        self.cancel_button.setEnabled(running)
        self.cancel_action.setEnabled(running)
        self.remove_action.setEnabled(not running and bool(self.batch.selectedItems()))
        self.clear_action.setEnabled(not running and not self.batch.is_empty())
        self.output_button.setEnabled(not running)
        self.strength.setEnabled(not running)
        settings = self.strength.settings()
        self.strength.preview_button.setEnabled(
            self._preview_photo() is not None and settings is not None
            and settings.layers.zeroshot)
        self.export_action.setEnabled(not running and any(
            e.result is not None for e in self.batch.entries()))
        self.protect_again_action.setEnabled(not running and any(
            e.status in FINISHED for e in self.batch.entries()))

    def protect(self) -> None:
        settings = self.strength.settings()
        entries = self.batch.runnable_entries()
        if self.engine.job_running or settings is None or not entries:
            return
        self._job_paths = [e.path for e in entries]
        for path in self._job_paths:
            self.batch.set_status(path, Status.QUEUED, "waiting its turn")
        job = ProtectJob(inputs=tuple(self._job_paths), output_dir=self.output_dir,
                         settings=settings, export=self.export_options,
                         device=self.settings.device,
                         # The app writes every run into the same folder: photos protected
                         # there before are reported and kept, never refused or redone.
                         resume=True)
        self._job_started = time.monotonic()
        self.photo_progress.setValue(0)
        self.batch_progress.setValue(0)
        self.status_progress.setValue(0)
        self.status_progress.show()
        self.finished_panel.hide()
        self.progress_label.setText(f"Starting: {counted(len(entries), 'photo')}…")
        self.engine.start_job(job)
        self._sync_controls()

    def cancel(self) -> None:
        if self.engine.job_running:
            self.engine.cancel_job()
            self.progress_label.setText("Cancelling after the current step…")

    def _path(self, photo_id: int | None) -> Path | None:
        if photo_id is None or not 0 <= photo_id < len(self._job_paths):
            return None
        return self._job_paths[photo_id]

    def _on_event(self, event: object) -> None:
        if isinstance(event, ev.JobStarted):
            self.progress_label.setText(f"Protecting {counted(event.total_photos, 'photo')} on "
                                        f"{event.device}. {event.message}".strip())
        elif isinstance(event, ev.PhotoStarted):
            if (path := self._path(event.photo_id)) is not None:
                self.batch.set_status(path, Status.RUNNING, percent=0)
            self.photo_progress.setValue(0)
        elif isinstance(event, ev.Progress):
            self._on_progress(event)
        elif isinstance(event, ev.PhotoDone):
            if (path := self._path(event.photo_id)) is not None:
                self.batch.set_result(path, event.result)
                if self.viewer.canvas.after is None:
                    self._show_in_viewer(self.batch.entry(path))
        elif isinstance(event, ev.PhotoUnprotected):
            if (path := self._path(event.photo_id)) is not None:
                self.batch.set_status(path, Status.UNPROTECTED, event.reason)
            self.notes.warning(f"Not protected: {event.reason}")
        elif isinstance(event, ev.PhotoSkipped) and event.result is not None:
            if (path := self._path(event.photo_id)) is not None:
                self.batch.set_result(path, event.result, "protected in an earlier run")
        elif isinstance(event, (ev.PhotoFailed, ev.PhotoSkipped)):
            failed = isinstance(event, ev.PhotoFailed)
            if (path := self._path(event.photo_id)) is not None:
                self.batch.set_status(path, Status.FAILED if failed else Status.SKIPPED,
                                      event.reason)
            name = Path(event.source).name
            text = event.reason if event.reason.startswith(name) else f"{name}: {event.reason}"
            (self.notes.error if failed else self.notes.warning)(text)
        elif isinstance(event, ev.Notice):
            self.notes.warning(event.message)
        elif isinstance(event, ev.JobFinished):
            ran = set(self._job_paths)
            entries = [e for e in self.batch.entries() if e.path in ran]
            self.progress_label.setText(
                f"Finished in {format_duration(event.seconds)}: {run_counts(entries)}.")
            self.batch_progress.setValue(1000)
        elif isinstance(event, ev.JobCancelled):
            self.progress_label.setText(f"Cancelled. {counted(event.done, 'photo')} {was_were(event.done)} "
                                        "protected and kept.")
            # The bar showed the work in progress; now it shows what is finished.
            finished = sum(1 for p in self._job_paths if self.batch.entry(p).status in
                           (Status.DONE, Status.RECOGNISED, Status.FAILED, Status.SKIPPED)) \
                if self._job_paths else 0
            self.batch_progress.setValue(int(1000 * finished / max(1, len(self._job_paths))))

    def _on_progress(self, event: ev.Progress) -> None:
        stage = STAGES.get(event.stage, event.stage)
        pct = int(100 * event.step / event.total) if event.total > 0 else 0
        self.photo_progress.setValue(pct)
        self.photo_progress.setFormat(f"{stage}: %p%")
        self.batch_progress.setValue(int(1000 * min(max(event.overall, 0.0), 1.0)))
        self.status_progress.setValue(self.batch_progress.value())
        self.status_progress.setFormat(f"{stage}: %p%")
        if (path := self._path(event.photo_id)) is not None:
            self.batch.set_status(path, Status.RUNNING, stage.lower(), pct)
        eta = f" About {format_duration(event.eta_s)} left." if event.eta_s is not None else ""
        self.progress_label.setText(f"{stage} {event.step}/{event.total}.{eta} "
                                    f"{event.message}".strip())

    def _on_job_finished(self, summary: object) -> None:
        if isinstance(summary, JobSummary):
            self.last_summary = summary
            if summary.cancelled:
                self._mark_unfinished(Status.CANCELLED, "stopped before it finished")
        self._mark_unfinished(Status.QUEUED, "")
        self._release_waiting()
        self._reset_photo_progress()
        self.status_progress.hide()
        self.show_results()
        self._sync_controls()
        self._schedule_estimate()

    # ------------------------------------------------------------------ finished state
    def show_results(self) -> None:
        """One verdict per album of the protected photos, with "Open folder" and "Open
        report"; hidden while nothing is protected."""
        while self.finished_rows.count():
            item = self.finished_rows.takeAt(0)
            widget = item.widget() if item is not None else None
            if widget is not None:
                widget.hide()
                widget.deleteLater()
        results = [e.result for e in self.batch.entries() if e.result is not None]
        self.album_verdicts = verdicts(results)
        self.verdict_labels, self.open_folder_buttons, self.open_report_buttons = [], [], []
        for verdict in self.album_verdicts:
            row = QWidget()
            line = QHBoxLayout(row)
            line.setContentsMargins(0, 0, 0, 0)
            label = QLabel(verdict.text)
            label.setWordWrap(True)
            label.setAccessibleName(f"Verdict for {verdict.album}")
            label.setStyleSheet("color: #15803d;" if verdict.zero_shot and verdict.fine_tuning
                                else "color: #b45309;")
            folder = QPushButton("Open folder")
            folder.setAccessibleName(f"Open folder of {verdict.album}")
            folder.clicked.connect(lambda _=False, v=verdict: self.open_folder(v.folder))
            report = QPushButton("Open report")
            report.setAccessibleName(f"Open report of {verdict.album}")
            report.setEnabled(report_for(verdict.folder) is not None)
            report.clicked.connect(lambda _=False, v=verdict: self.open_report(v.folder))
            line.addWidget(label, 1)
            buttons = QVBoxLayout()
            buttons.addWidget(folder)
            buttons.addWidget(report)
            line.addLayout(buttons)
            self.finished_rows.addWidget(row)
            self.verdict_labels.append(label)
            self.open_folder_buttons.append(folder)
            self.open_report_buttons.append(report)
        self.finished_panel.setVisible(bool(self.album_verdicts))

    def open_folder(self, folder: Path) -> bool:
        """Show ``folder`` in the system's file manager."""
        ok = QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))
        if not ok:
            self.notes.error(f"Could not open {folder}: no file manager answered.")
        return bool(ok)

    def open_report(self, folder: Path) -> bool:
        """Open the album's report.html in the default browser."""
        report = report_for(folder)
        if report is None:
            self.notes.error(f"There is no report in {folder} (it is written at the end of "
                             "each album).")
            return False
        ok = QDesktopServices.openUrl(QUrl.fromLocalFile(str(report)))
        if not ok:
            self.notes.error(f"Could not open {report}: no browser answered.")
        return bool(ok)

    def _release_waiting(self) -> None:
        # Photos the run never reached are no longer waiting for anything.
        current = {e.path: e for e in self.batch.entries()}
        for path in self._job_paths:
            entry = current.get(path)
            if entry is not None and entry.status is Status.QUEUED and entry.detail:
                self.batch.set_status(path, Status.QUEUED)

    def _reset_photo_progress(self) -> None:
        # A stage name and percentage left over from the last photo read as if work continued.
        self.photo_progress.reset()
        self.photo_progress.setFormat("%p%")

    def _on_job_crashed(self, message: str) -> None:
        self.status_progress.hide()
        self._mark_unfinished(Status.FAILED, message)
        self.notes.error(f"Protection stopped: {message}")
        self.progress_label.setText("Protection stopped by an error.")
        self._release_waiting()
        self._reset_photo_progress()
        self._sync_controls()

    def _mark_unfinished(self, status: Status, detail: str) -> None:
        current = {e.path: e for e in self.batch.entries()}
        for path in self._job_paths:
            entry = current.get(path)
            if entry is not None and entry.status is Status.RUNNING:
                self.batch.set_status(path, status, detail)

    # ------------------------------------------------------------------ viewer
    # ------------------------------------------------------------------ preview
    def _preview_photo(self) -> Path | None:
        """The selected photo (else the first listed) that can be read, for the preview."""
        for entry in self.batch.selected_entries() or self.batch.entries():
            if entry.status not in (Status.SKIPPED, Status.FAILED):
                return entry.path
        return None

    def preview_face(self) -> None:
        """Show the largest face of the selected photo protected at the chosen strength with a
        few steps (engine thread, cancellable, nothing saved)."""
        settings, photo = self.strength.settings(), self._preview_photo()
        if settings is None or photo is None or self.engine.job_running:
            return
        if self.preview_dialog is not None:
            self.preview_dialog.cancel()
            self.preview_dialog.deleteLater()
        self.preview_dialog = FacePreviewDialog(self.engine, self.services.protect, photo,
                                                settings, self.strength.eps_label.text(), self)
        self.preview_dialog.open()
        self.preview_dialog.start()

    def show_selected_in_viewer(self) -> None:
        chosen = self.batch.selected_entries()
        if chosen and chosen[0].result is not None:
            self._show_in_viewer(chosen[0])
            self.tabs.setCurrentWidget(self.viewer)

    def _show_in_viewer(self, entry: PhotoEntry) -> None:
        if entry.result is None:
            return
        try:
            self.viewer.show_result(entry.path, entry.result)
        except OSError as exc:
            self.notes.error(f"Cannot show {entry.path.name}: {exc}")

    # ------------------------------------------------------------------ output and export
    def _update_output_label(self) -> None:
        opts = self.export_options
        fmt = opts.format.value.upper() + (f" q{opts.quality}" if opts.format is not
                                           OutputFormat.PNG else "")
        self.output_label.setText(f"Save to {self.output_dir} ({fmt}"
                                  f"{', report' if opts.write_report else ''})")

    def choose_output(self) -> None:
        dialog = ExportDialog(self.output_dir, self.export_options, title="Output options",
                              intro="Where and how protected photos are written.",
                              action="Save", parent=self)
        if dialog.exec():
            self.set_output(dialog.folder(), dialog.options())

    def set_output(self, folder: Path, options: ExportOptions) -> None:
        options = replace(options, export_unprotected=self.settings.export_unprotected)
        self.output_dir, self.export_options = folder, options
        self.settings = replace(self.settings, default_output=str(folder),
                                output_format=options.format.value, jpeg_quality=options.quality,
                                keep_metadata=options.keep_metadata)
        self._save_settings()
        self._update_output_label()

    def export_album(self) -> None:
        from dladiff_app.gui.export_album import start_export

        start_export(self)

    # ------------------------------------------------------------------ models and settings
    def _on_device(self, summary: object) -> None:
        if isinstance(summary, DeviceSummary):
            self.device = summary
            if summary.reason:
                self.statusBar().showMessage(summary.reason)
            self._schedule_estimate()

    def _on_models(self, rows: object) -> None:
        self.model_rows = list(rows)  # type: ignore[call-overload]
        missing = [r for r in self.model_rows if not r.present]
        sd = next((r for r in self.model_rows if r.id == "sd15"), None)
        sd_missing = sd is not None and not sd.present
        self.strength.set_finetune_available(not sd_missing)
        if sd_missing and self._sd_missing is not True:
            # It cannot run: start without it rather than promise it and skip it.
            self.strength.finetune.setChecked(False)
        elif not sd_missing and self._sd_missing is True and not self.settings.offline_zeroshot:
            self.strength.finetune.setChecked(True)  # just downloaded or pointed to
        self._sd_missing = sd_missing
        if self.settings.first_run_done:
            return
        if not missing:
            self.first_run_banner.hide()
            return
        names = ", ".join(r.title for r in missing[:3]) + ("…" if len(missing) > 3 else "")
        self.first_run_text.setText(
            "Welcome! You can protect photos right away, offline, against tools that copy a "
            f"face from one photo. {counted(len(missing), 'model')} "
            f"{'is' if len(missing) == 1 else 'are'} not on this computer yet ({names}): get "
            f"{'it' if len(missing) == 1 else 'them'} under Models for more protection.")
        self.first_run_banner.show()

    def _finish_first_run(self, download: bool) -> None:
        self.first_run_banner.hide()
        self.settings = replace(self.settings, first_run_done=True,
                                offline_zeroshot=not download)
        self._save_settings()
        if download:
            self.open_model_manager()
        else:
            self.strength.set_layers(Layers.ZEROSHOT)

    def open_model_manager(self) -> ModelManagerDialog:
        if self.model_manager is None:
            self.model_manager = ModelManagerDialog(self.services.models, self.engine, self)
            self.model_manager.models_changed.connect(self._on_models)
        self.model_manager.show()
        self.model_manager.raise_()
        return self.model_manager

    def open_help(self) -> None:
        from dladiff_app.gui.help_dialog import HelpDialog

        dialog = HelpDialog(self.model_rows, self.settings, self.output_dir, self)
        dialog.setModal(False)
        dialog.show()
        self.help_dialog = dialog

    def open_settings(self) -> None:
        dialog = SettingsDialog(self.settings, self.device, self)
        if dialog.exec():
            self.apply_settings(dialog.result_settings())

    def apply_settings(self, settings: Settings) -> None:
        device_changed = settings.device != self.settings.device
        self.settings = settings
        if settings.default_output:
            self.output_dir = Path(settings.default_output)
        self._update_output_label()
        self._save_settings()
        if device_changed:
            self.engine.submit(lambda: self.services.device.describe(settings.device),
                               self._on_device, self.notes.error)

    def _save_settings(self) -> None:
        try:
            save_settings(self.settings, self.settings_path)
        except OSError as exc:
            self.notes.error(f"Could not save settings: {exc}")

    # ------------------------------------------------------------------ window state
    def _qsettings(self) -> QSettings:
        if self.settings_path is not None:
            return QSettings(str(self.settings_path.with_name("window.ini")),
                             QSettings.Format.IniFormat)
        return QSettings("DLADiff", "DLADiff")

    def _restore_geometry(self) -> None:
        geometry = self._qsettings().value("geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)  # type: ignore[arg-type]

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.engine.job_running:
            ran = set(self._job_paths)
            left = sum(e.path in ran and e.status in (Status.QUEUED, Status.RUNNING)
                       for e in self.batch.entries())
            if not ask_quit_during_run(self, f"{left} of {counted(len(self._job_paths), 'photo')}"
                                             " left"):
                event.ignore()
                return
        self._estimate_timer.stop()
        self._qsettings().setValue("geometry", self.saveGeometry())
        self.engine.shutdown()
        self.batch.shutdown()
        if self.model_manager is not None:
            self.model_manager.close()
        super().closeEvent(event)
