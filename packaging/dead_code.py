#!/usr/bin/env python3
"""List functions, methods and classes of ``dladiff_app`` that nothing outside the tests uses.

    python3 packaging/dead_code.py          # prints one `path:line name` per suspect, exit 1 if any

A definition counts as used when its name appears as a whole word anywhere in the app, the
benchmarks, the packaging scripts, ``dev.py`` or ``pyproject.toml`` other than on its own ``def``
/ ``class`` line. The tests are not searched: code that only a test calls is dead code the test
keeps alive. The check is by name, so it errs on the side of "used" (two functions sharing a
name hide each other); it never calls a used function dead except for names reached only by
string (``getattr``) or by a framework, which are listed in ``IMPLICIT`` below.
Only the standard library is used, so it runs without the project's environment.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where a use keeps a definition alive: everything that ships or that a maintainer runs.
USE_SOURCES = ("dladiff_app", "benchmarks", "packaging", "dev.py", "pyproject.toml")
# Names that Python, Qt, torch or argparse call for us: a definition with one of these names is
# used although no source line spells a call to it.
IMPLICIT = {
    "forward", "run", "main", "event", "eventFilter", "paintEvent", "resizeEvent",
    "mousePressEvent", "mouseMoveEvent", "mouseReleaseEvent", "mouseDoubleClickEvent",
    "wheelEvent", "keyPressEvent",
    "closeEvent", "showEvent", "hideEvent", "changeEvent", "dragEnterEvent", "dropEvent",
    "enterEvent", "leaveEvent", "sizeHint", "minimumSizeHint", "contextMenuEvent",
    "timerEvent", "data", "rowCount", "columnCount", "headerData", "flags", "setData",
    "__call__",
}


def _source_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for src in (root / name for name in USE_SOURCES):
        if src.is_file():
            files.append(src)
        elif src.is_dir():
            files.extend(p for p in src.rglob("*.py") if "__pycache__" not in p.parts)
    return files


def _definitions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = node.name
            if name.startswith("__") and name.endswith("__"):
                continue
            found.append((name, node.lineno))
    return found


def find_dead(root: Path = ROOT) -> list[tuple[Path, int, str]]:
    """Return (file, line, name) for each definition in ``root``'s package with no use outside
    the tests."""
    package = root / "dladiff_app"
    texts = {p: p.read_text(encoding="utf-8").splitlines() for p in _source_files(root)}
    dead = []
    for path in sorted(p for p in texts if package in p.parents):
        for name, line in _definitions(path):
            if name in IMPLICIT:
                continue
            word = re.compile(rf"\b{re.escape(name)}\b")
            def_line = re.compile(rf"^\s*(async\s+)?(def|class)\s+{re.escape(name)}\b")
            used = any(word.search(text) and not (def_line.match(text))
                       for lines in texts.values() for text in lines)
            if not used:
                dead.append((path, line, name))
    return dead


def main() -> int:
    dead = find_dead()
    for path, line, name in dead:
        print(f"{path.relative_to(ROOT)}:{line} {name}", flush=True)
    print(f"{len(dead)} definition(s) used by nothing but tests", file=sys.stderr)
    return 1 if dead else 0


if __name__ == "__main__":
    sys.exit(main())
