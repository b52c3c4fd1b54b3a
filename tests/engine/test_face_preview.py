"""The quick preview: one face protected with a few steps of the real zero-shot shield, on its
crop only, with the run's budget, cancellable, writing nothing (real offline face models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import Cancelled, NoFaceError
from dladiff_app.core.presets import PRESETS
from dladiff_app.core.settings import Settings
from dladiff_app.core.visibility import face_visibility
from dladiff_app.engine.face_preview import preview_settings
from dladiff_app.engine.services import build_services

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLADIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DLADIFF_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("DLADIFF_OFFLINE", "1")
    monkeypatch.delenv("DLADIFF_DEVICE", raising=False)


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_preview_protects_the_face_crop_within_the_budget_and_writes_nothing(
        tmp_path: Path) -> None:
    from skimage import data

    photo = tmp_path / "photos" / "astronaut.png"
    photo.parent.mkdir()
    Image.fromarray(data.astronaut()).save(photo)
    services = build_services(Settings(device="cpu"))
    before = _files(tmp_path)
    seen: list[tuple[int, int]] = []
    medium = PRESETS["medium"]
    preview = services.protect.preview_face(photo, medium, CancelToken(),
                                            lambda done, total: seen.append((done, total)))
    assert _files(tmp_path) == before  # nothing written, not even next to the photo
    assert preview.source == str(photo) and preview.faces_in_photo == 1
    # The real run's steps: the preview's verdict is the album's for this face.
    assert (preview.steps, preview.full_steps) == (medium.layer2_steps, medium.layer2_steps)
    assert seen[-1] == (medium.layer2_steps, medium.layer2_steps)
    a, b = preview.original, preview.protected
    assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape and a.shape[2] == 3
    # A crop around the face, not the photo; the face box lies inside it.
    assert max(a.shape[:2]) < 512
    x0, y0, x1, y1 = preview.box
    assert 0 <= x0 < x1 <= a.shape[1] and 0 <= y0 < y1 <= a.shape[0]
    change = np.abs(a.astype(int) - b.astype(int))
    assert 0 < change.max() <= medium.eps  # the run's budget, on the 8-bit pixels
    # The figures are core.visibility's on the very crops shown.
    vis = face_visibility(a, b, [preview.box])
    assert vis is not None
    assert (preview.face_ssim, preview.face_de_mean, preview.face_de_p95) == pytest.approx(
        (vis.ssim, vis.de_mean, vis.de_p95), rel=1e-6)
    assert preview.face_jnd is not None and preview.face_jnd > 0
    assert preview.face_de_mean > 0 and preview.scores
    assert {s.encoder for s in preview.scores} >= {"dlib"}


def test_preview_is_cancellable_and_says_when_there_is_no_face(tmp_path: Path) -> None:
    from skimage import data

    face, sky = tmp_path / "astronaut.png", tmp_path / "coffee.png"
    Image.fromarray(data.astronaut()).save(face)
    Image.fromarray(data.coffee()).save(sky)
    services = build_services(Settings(device="cpu"))
    token = CancelToken()

    def cancel_at_two(done: int, _total: int) -> None:
        if done >= 2:
            token.cancel()

    with pytest.raises(Cancelled):
        services.protect.preview_face(face, PRESETS["low"], token, cancel_at_two)
    with pytest.raises(NoFaceError, match="No face found in coffee.png"):
        services.protect.preview_face(sky, PRESETS["low"], CancelToken())


def test_preview_settings_keep_the_budget_and_the_steps() -> None:
    for name, s in PRESETS.items():
        quick = preview_settings(s)
        assert quick.eps == s.eps and quick.step2 == s.step2 and quick.eot == s.eot, name
        assert quick.layers.value == "zeroshot" and quick.polish_steps == 0
        assert quick.layer2_steps == s.layer2_steps
        assert quick.face_jnd_target == s.face_jnd_target
