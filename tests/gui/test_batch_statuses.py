"""The app with the real job runner (and a light test kit): a photo without a face is shown as
"Not protected" in its own colour; after a restart, earlier results of the output folder are
shown as protected with viewer and export working; "Protect again at this strength" writes a new
protection next to the old one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.events import EventSink
from dladiff_app.core.jobs import ProtectJob
from dladiff_app.core.presets import ProtectionSettings
from dladiff_app.core.services import JobSummary
from dladiff_app.gui.batch_list import STATUS_COLOURS, Status
from tests.engine.light_kit import light_kit, make_photos

pytestmark = pytest.mark.gui


@dataclass
class RunnerService:
    """The real ``run_job`` behind the ProtectService protocol, with the light test kit."""

    def protect(self, job: ProtectJob, sink: EventSink, cancel: CancelToken) -> JobSummary:
        from dladiff_app.engine.runner import run_job

        return run_job(job, light_kit(eps=job.settings.eps), sink, cancel)

    def estimate_seconds(self, n_photos: int, settings: ProtectionSettings,
                         megapixels: float = 12.0) -> float:
        return float(n_photos)


def test_no_face_restart_and_protect_again(qtbot, make_window, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from dladiff_app.gui.services import Services
    from tests.gui.fakes import FakeDeviceService, FakeModelService

    face, = make_photos(tmp_path / "in" / "anna", ["face.png"])
    noise, = make_photos(tmp_path / "in" / "anna", ["noise.png"], faces=False, seed=1)
    svc = Services(protect=RunnerService(), models=FakeModelService(tmp_path / "models"),
                   device=FakeDeviceService())
    window = make_window(svc=svc)
    window.add_paths([face, noise])
    window.protect()
    qtbot.waitUntil(lambda: not window.engine.busy, timeout=30_000)
    face_entry, noise_entry = (window.batch.entry(p.resolve()) for p in (face, noise))
    assert face_entry.status is Status.DONE and face_entry.result is not None
    assert noise_entry.status is Status.UNPROTECTED and noise_entry.result is None
    assert noise_entry.status_text.startswith("Not protected: no face found in noise.png")
    assert STATUS_COLOURS[Status.UNPROTECTED] not in (STATUS_COLOURS[Status.DONE],
                                                      STATUS_COLOURS[Status.FAILED])
    assert "1 NOT protected" in window.progress_label.text()
    first_output = Path(face_entry.result.output)
    window.close()

    # A restart: the same photos listed again show the earlier protection, ready to view/export.
    again = make_window(svc=svc)
    again.add_paths([face, noise])
    face_entry = again.batch.entry(face.resolve())
    assert face_entry.status is Status.DONE and face_entry.result is not None
    assert Path(face_entry.result.output) == first_output
    assert "protected earlier" in face_entry.status_text
    assert again.export_action.isEnabled() and again.protect_again_action.isEnabled()
    again._show_in_viewer(face_entry)
    assert again.viewer.canvas.after is not None

    # Protect again at another strength: a new file, the earlier one kept.
    again.strength.set_preset("high")
    again.batch.select_path(face.resolve())
    again.protect_again()
    qtbot.waitUntil(lambda: not again.engine.busy, timeout=30_000)
    face_entry = again.batch.entry(face.resolve())
    assert face_entry.status is Status.DONE and face_entry.result is not None
    assert Path(face_entry.result.output).name == "face-protected-2.png"
    assert first_output.is_file()
