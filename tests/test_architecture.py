"""The layer rules are enforced by import-linter; prove the contracts bite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    return subprocess.run([str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"),
                           "--no-cache"], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=300)


def _copy_tree(dest: Path) -> Path:
    shutil.copytree(ROOT / "dladiff_app", dest / "dladiff_app",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed")
@pytest.mark.parametrize(
    ("module", "source", "broken"),
    [
        ("dladiff_app/core/_bad_qt.py", "import PySide6.QtCore\n", "core imports neither"),
        ("dladiff_app/core/_bad_torch.py", "import torch\n", "core imports neither"),
        ("dladiff_app/engine/_bad_qt.py", "from PySide6 import QtWidgets\n", "only gui imports Qt"),
        ("dladiff_app/engine/_bad_up.py", "import dladiff_app.gui\n", "Layers"),
        ("dladiff_app/core/_bad_up.py", "import dladiff_app.engine\n", "Layers"),
    ],
)
def test_contracts_reject_a_wrong_import(tmp_path: Path, module: str, source: str,
                                         broken: str) -> None:
    tree = _copy_tree(tmp_path)
    (tree / module).write_text(source)
    result = _lint(tree)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout
    broken_lines = [ln for ln in result.stdout.splitlines() if "BROKEN" in ln]
    assert any(broken in ln for ln in broken_lines), result.stdout


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed")
def test_contracts_reject_an_import_cycle(tmp_path: Path) -> None:
    """The settings file's place comes from ``paths``; ``paths`` importing the settings back
    (even lazily, inside a function) is a cycle the contracts must refuse."""
    tree = _copy_tree(tmp_path)
    with open(tree / "dladiff_app" / "core" / "paths.py", "a", encoding="utf-8") as handle:
        handle.write("\n\ndef _planted() -> object:\n"
                     "    from dladiff_app.core.settings import load_settings\n\n"
                     "    return load_settings()\n")
    result = _lint(tree)
    assert result.returncode != 0, result.stdout
    broken_lines = [ln for ln in result.stdout.splitlines() if "BROKEN" in ln]
    assert broken_lines and all("no import cycles" in ln for ln in broken_lines), result.stdout


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed")
def test_contracts_hold_on_the_real_tree(tmp_path: Path) -> None:
    result = _lint(_copy_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module", ["dladiff_app.app", "dladiff_app.gui.main_window",
                                    "dladiff_app.cli.main", "dladiff_app.core.imageio"])
def test_front_ends_import_without_the_ml_stack(module: str) -> None:
    """The window (and `dladiff --help`) must come up before torch & co. load."""
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'insightface', "
            "'onnxruntime', 'cv2', 'dlib') if m in sys.modules]; print(heavy); "
            "sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
