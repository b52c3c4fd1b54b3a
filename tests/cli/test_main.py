"""The `dladiff` entry point: every planned command is there and --help is instant."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from dladiff_app.cli.main import COMMAND_MODULES, available_command_modules, main


@pytest.fixture(autouse=True)
def _restore_environment() -> Iterator[None]:
    # main() points HF_HOME & co. at the model folder for the process; keep other tests clean.
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_every_planned_command_is_installed() -> None:
    assert available_command_modules() == list(COMMAND_MODULES)


def test_help_lists_the_commands(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("protect", "score", "models", "doctor"):
        assert f"    {command}" in out


def test_no_command_is_a_usage_error(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main([]) == 2
    assert main(["protect", "--no-such-option"]) == 2


def test_help_does_not_load_the_ml_stack() -> None:
    code = ("import sys; from dladiff_app.cli.main import main; main(['--help']); "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
