"""Clean the process environment before the QApplication exists.

opencv-python (pulled in by insightface) points ``QT_QPA_PLATFORM_PLUGIN_PATH`` and
``QT_QPA_FONTDIR`` at its bundled Qt5 plugins when ``cv2`` is imported. PySide6 (Qt6) then tries
to load Qt5 platform plugins and the window never appears. Any such variable that points into a
``cv2`` package is removed; a variable the user set to somewhere else is left alone.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import PurePath

QT_VARIABLES_CV2_SETS = ("QT_QPA_PLATFORM_PLUGIN_PATH", "QT_QPA_FONTDIR")


def _points_into_cv2(value: str) -> bool:
    for entry in value.split(os.pathsep):
        parts = [p.lower() for p in PurePath(entry).parts]
        if any(p == "cv2" or p.startswith("opencv") for p in parts):
            return True
    return False


def sanitize_qt_environment(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Remove Qt variables that point into OpenCV's bundled Qt; return the names removed.

    Call it before creating the ``QApplication`` (and again is harmless). ``environ`` defaults
    to ``os.environ``.
    """
    env = os.environ if environ is None else environ
    removed = []
    for name in QT_VARIABLES_CV2_SETS:
        value = env.get(name)
        if value and _points_into_cv2(value):
            del env[name]
            removed.append(name)
    return removed
