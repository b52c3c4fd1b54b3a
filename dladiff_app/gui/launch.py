"""Start the Qt application around a :class:`MainWindow` (called by ``dladiff_app.app``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dladiff_app.core.settings import Settings
from dladiff_app.gui.qt_env import sanitize_qt_environment
from dladiff_app.gui.services import Services


def as_services(services: Any) -> Services:
    """Accept our dataclass or any object with ``protect``, ``models`` and ``device``."""
    if isinstance(services, Services):
        return services
    return Services(protect=services.protect, models=services.models, device=services.device)


def app_icon() -> Any:
    """The app's icon (``resources/dladiff.svg``) as a QIcon, or None where the file is not
    shipped (a plain wheel install) or cannot be read: Qt's default icon is used then."""
    from PySide6.QtGui import QIcon

    from dladiff_app.core.resources import resource_path

    path = resource_path("dladiff.svg")
    if path is None:
        return None
    icon = QIcon(str(path))
    return None if icon.isNull() else icon


def run_app(services: Any, settings: Settings | None = None, photos: list[Path] | None = None,
            self_test: bool = False, settings_path: Path | None = None) -> int:
    """Show the window and run the event loop; returns the exit code.

    ``self_test``: build and show the window, process pending events, close it cleanly (engine
    thread joined) and return 0, so packaging and CI can prove the GUI starts.
    """
    sanitize_qt_environment()
    from PySide6.QtWidgets import QApplication

    from dladiff_app.gui.main_window import MainWindow

    app = QApplication.instance() or QApplication([])
    app.setApplicationName("DLADiff")
    app.setOrganizationName("DLADiff")
    icon = app_icon()
    if icon is not None:
        app.setWindowIcon(icon)
    window = MainWindow(services=as_services(services), settings=settings,
                        settings_path=settings_path)
    if photos:
        window.add_paths(list(photos))
    window.show()
    if self_test:
        app.processEvents()
        window.close()
        app.processEvents()
        return 0
    return int(app.exec())
