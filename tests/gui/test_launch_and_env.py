"""qt_env cleaning, the launch helper, and a job on the real engine through the window."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dladiff_app.core.presets import Layers, ProtectionSettings
from dladiff_app.gui.qt_env import sanitize_qt_environment


def test_sanitize_removes_only_opencv_qt_paths() -> None:
    env = {"QT_QPA_PLATFORM_PLUGIN_PATH": "/venv/lib/python3.11/site-packages/cv2/qt/plugins",
           "QT_QPA_FONTDIR": "/usr/share/fonts", "OTHER": "x"}
    assert sanitize_qt_environment(env) == ["QT_QPA_PLATFORM_PLUGIN_PATH"]
    assert env == {"QT_QPA_FONTDIR": "/usr/share/fonts", "OTHER": "x"}


def test_sanitize_after_importing_cv2_lets_qt_start(monkeypatch: pytest.MonkeyPatch) -> None:
    cv2 = pytest.importorskip("cv2")
    import os

    set_by_cv2 = [k for k in ("QT_QPA_PLATFORM_PLUGIN_PATH", "QT_QPA_FONTDIR")
                  if "cv2" in os.environ.get(k, "")]
    removed = sanitize_qt_environment()
    assert set(set_by_cv2) <= set(removed), cv2.__file__
    assert all("cv2" not in os.environ.get(k, "") for k in ("QT_QPA_PLATFORM_PLUGIN_PATH",
                                                            "QT_QPA_FONTDIR"))


def test_run_app_self_test_starts_and_stops(qtbot, services, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from dladiff_app.core.settings import Settings
    from dladiff_app.gui.launch import run_app

    settings = Settings(default_output=str(tmp_path / "out"), first_run_done=True)
    assert run_app(services, settings=settings, self_test=True,
                   settings_path=tmp_path / "cfg" / "settings.json") == 0


def test_estimate_unknown_is_said_not_invented(qtbot) -> None:  # type: ignore[no-untyped-def]
    from dladiff_app.gui.strength_panel import StrengthPanel

    panel = StrengthPanel()
    qtbot.addWidget(panel)
    panel.set_estimate(math.nan, "NVIDIA X", 2)
    assert "not known yet on NVIDIA X" in panel.estimate.text()


@pytest.mark.slow
def test_real_engine_end_to_end(qtbot, tmp_path: Path, request) -> None:  # type: ignore[no-untyped-def]
    """The window drives the real engine on the tiny fixtures: both shields (tiny SD for the
    fine-tuning shield, the real offline dlib encoder for the zero-shot shield), a few steps."""
    import dladiff_app.engine.services as engine_services

    tiny_sd_dir: Path = request.getfixturevalue("tiny_sd_dir")
    from skimage import data

    from dladiff_app.core.settings import Settings
    from dladiff_app.gui.batch_list import Status
    from dladiff_app.gui.main_window import MainWindow
    from dladiff_app.gui.services import Services
    from tests.gui.fakes import FakeModelService

    protect = engine_services.EngineProtectService(pipeline_dir=tiny_sd_dir)
    services = Services(protect=protect, models=FakeModelService(tmp_path / "m"),
                        device=engine_services.EngineDeviceService())
    photo = tmp_path / "in" / "astronaut" / "astronaut.png"
    photo.parent.mkdir(parents=True)
    Image.fromarray(np.asarray(data.astronaut())).resize((256, 256)).save(photo)
    window = MainWindow(services=services, settings=Settings(
        device="cpu", default_output=str(tmp_path / "out"), first_run_done=True),
        settings_path=tmp_path / "cfg" / "settings.json")
    qtbot.addWidget(window)
    window.strength.set_settings(ProtectionSettings(
        preset="custom", eps=8, layers=Layers.BOTH, layer1_rounds=1, layer1_pgd_steps=2,
        layer1_lora_steps=1, prior_steps=2, layer2_steps=3, polish_steps=1, eot=False))
    window.add_paths([photo])
    window.protect()
    qtbot.waitUntil(lambda: not window.engine.busy, timeout=170_000)
    entry = window.batch.entry(photo.resolve())
    # Three shield steps rarely hide a face: "Changed, still recognised" is the honest status.
    assert entry.status in (Status.DONE, Status.RECOGNISED), entry.status_text
    assert entry.result is not None and Path(entry.result.output).is_file()
    assert {"layer1", "layer2", "polish"} <= set(entry.result.layers_done), entry.result.layers_done
    window.batch.select_path(entry.path)
    window.show_selected_in_viewer()
    scores = [s for s in entry.result.scores if s.value is not None]
    assert scores, entry.result
    texts = " | ".join(b.text() for b in window.viewer.badges)
    for s in scores:
        assert f"{s.value:.3f}" in texts


def test_app_icon_is_the_shipped_svg(qtbot) -> None:  # type: ignore[no-untyped-def]
    from dladiff_app.gui.launch import app_icon

    icon = app_icon()
    assert icon is not None and not icon.isNull()
    assert not icon.pixmap(64, 64).isNull()


def test_no_display_is_a_clear_message_not_a_qt_abort(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from dladiff_app.gui.qt_env import display_problem

    assert "no display here" in (display_problem({}, "linux") or "")
    assert display_problem({"DISPLAY": ":0"}, "linux") is None
    assert display_problem({"WAYLAND_DISPLAY": "wayland-0"}, "linux") is None
    assert display_problem({"QT_QPA_PLATFORM": "offscreen"}, "linux") is None
    assert display_problem({}, "win32") is None and display_problem({}, "darwin") is None
    # The real entry point, as `python3 dev.py run` starts it over SSH: exit 2, one message.
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["DLADIFF_CONFIG_DIR"] = str(tmp_path / "cfg")
    proc = subprocess.run([sys.executable, "-m", "dladiff_app.app"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "no display here" in proc.stderr and "reinstall" not in proc.stderr
