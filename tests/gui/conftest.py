"""GUI fixtures: fake engine services, sample photos, and a guard against leftover threads."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dladiff_app.core.settings import Settings
from tests.gui.fakes import FakeDeviceService, FakeModelService, FakeProtectService


@pytest.fixture(autouse=True)
def no_thread_left_running() -> Iterator[None]:
    """Fail any test that leaves a GUI-started QThread (or thumbnail pool) running."""
    yield
    from dladiff_app.gui.engine_thread import running_threads

    left = running_threads()
    assert not left, f"threads still running after the test: {left}"


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    """Three small real photos in two album folders (different content each)."""
    rng = np.random.default_rng(0)
    out = []
    for folder, names in (("alice", ("a1", "a2")), ("bob", ("b1",))):
        (tmp_path / "in" / folder).mkdir(parents=True)
        for name in names:
            pixels = rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)
            path = tmp_path / "in" / folder / f"{name}.png"
            Image.fromarray(pixels).save(path)
            out.append(path)
    return out


@pytest.fixture
def fake_protect() -> FakeProtectService:
    return FakeProtectService()


@pytest.fixture
def services(tmp_path: Path, fake_protect: FakeProtectService):  # type: ignore[no-untyped-def]
    from dladiff_app.gui.services import Services

    return Services(protect=fake_protect, models=FakeModelService(tmp_path / "models"),
                    device=FakeDeviceService())


@pytest.fixture
def make_window(qtbot, services, tmp_path: Path) -> Callable[..., object]:  # type: ignore[no-untyped-def]
    """Build a real MainWindow around the fakes; settings live in tmp_path."""
    from dladiff_app.gui.main_window import MainWindow

    def make(settings: Settings | None = None, svc=None):  # type: ignore[no-untyped-def]
        settings = settings or Settings(default_output=str(tmp_path / "out"),
                                        first_run_done=True)
        window = MainWindow(services=svc or services, settings=settings,
                            settings_path=tmp_path / "config" / "settings.json")
        qtbot.addWidget(window)
        window.show()
        return window

    return make
