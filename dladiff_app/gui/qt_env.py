"""Clean the process environment before the QApplication exists.

opencv-python (pulled in by insightface) points ``QT_QPA_PLATFORM_PLUGIN_PATH`` and
``QT_QPA_FONTDIR`` at its bundled Qt5 plugins when ``cv2`` is imported. PySide6 (Qt6) then tries
to load Qt5 platform plugins and the window never appears. Any such variable that points into a
``cv2`` package is removed; a variable the user set to somewhere else is left alone.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping
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


# Qt platforms that draw without a windowing system.
_HEADLESS_PLATFORMS = ("offscreen", "minimal", "vnc", "eglfs", "linuxfb", "vkkhrdisplay")


def display_problem(environ: Mapping[str, str] | None = None,
                    platform: str | None = None) -> str | None:
    """Why no window can open here, in words a person can act on; None when one can.

    On Linux (and the BSDs) Qt needs an X11 or Wayland display; without one it aborts the
    process with "could not connect to display ... reinstalling the application may fix this
    problem", which is wrong advice. Checked before the QApplication exists. Windows and macOS
    always have a display.
    """
    env = os.environ if environ is None else environ
    plat = sys.platform if platform is None else platform
    if plat.startswith(("win", "darwin", "cygwin")):
        return None
    requested = env.get("QT_QPA_PLATFORM", "").split(":")[0].strip().lower()
    if requested in _HEADLESS_PLATFORMS:
        return None
    if env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"):
        return None
    return ("DLADiff cannot open its window: there is no display here (neither DISPLAY nor "
            "WAYLAND_DISPLAY is set, for example over SSH or in a container). Run it on a "
            "desktop session, forward X (ssh -X), or use the command line instead: "
            "`python3 dev.py cli protect PHOTOS -o OUTPUT` (or `dladiff protect ...`). "
            "`dladiff-app --self-test` checks the app without a display.")
