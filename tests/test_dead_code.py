"""The dead-code check of the README's development section finds what only tests call."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _checker():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("dead_code", ROOT / "packaging" / "dead_code.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_function_only_tests_call_is_reported_and_a_used_one_is_not(tmp_path: Path) -> None:
    package = tmp_path / "dladiff_app"
    package.mkdir()
    (package / "tool.py").write_text(
        "def used_by_app() -> int:\n    return 1\n\n\n"
        "def only_tests() -> int:\n    return 2\n\n\n"
        "class Widget:\n    def forward(self) -> None: ...\n\n    def stale(self) -> None: ...\n")
    (package / "app.py").write_text("from dladiff_app.tool import used_by_app\n\n"
                                    "print(used_by_app())\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_tool.py").write_text(
        "from dladiff_app.tool import Widget, only_tests\n\nonly_tests(); Widget().stale()\n")
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "bench.py").write_text("from dladiff_app.tool import Widget\n")
    dead = _checker().find_dead(tmp_path)
    # Widget is used by a benchmark; forward is called by torch, not by name.
    assert sorted(name for _, _, name in dead) == ["only_tests", "stale"]
