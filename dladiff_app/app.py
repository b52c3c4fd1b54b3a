"""Composition root of the desktop app (``dladiff-app``).

Order matters: paths and the ML environment (HF_HOME, model folders) are set before any ML
library is imported, the Qt environment is cleaned of OpenCV's Qt5 plugin paths before the
QApplication exists, and the engine services are built lazily so the window shows before torch
loads. ``--self-test`` opens the main window offscreen, closes it and exits 0: packaging and CI
use it to prove the GUI starts.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from dladiff_app import __version__


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dladiff-app", description="DLADiff desktop app")
    parser.add_argument("photos", nargs="*", type=Path, help="photos or folders to add at start")
    parser.add_argument("--self-test", action="store_true",
                        help="open the main window offscreen, close it and exit 0")
    parser.add_argument("--version", action="version", version=f"dladiff-app {__version__}")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    multiprocessing.freeze_support()  # first thing: frozen (PyInstaller) child processes
    args = _parse(argv)
    if args.self_test:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from dladiff_app.gui.qt_env import display_problem

    problem = display_problem()
    if problem is not None:
        # Said before anything loads, instead of Qt's abort and its advice to reinstall.
        print(problem, file=sys.stderr)
        return 2

    from dladiff_app.core.paths import configure_ml_environment, models_dir
    from dladiff_app.core.settings import load_settings

    settings = load_settings()
    configure_ml_environment(models_dir(settings))

    from dladiff_app.engine.services import build_services
    from dladiff_app.gui.launch import run_app

    return run_app(build_services(settings), settings=settings, photos=list(args.photos),
                   self_test=args.self_test)


if __name__ == "__main__":
    sys.exit(main())
