"""Per-face identity scores: joined across the two measurements, and through a real job on the
six-face group photo t1.jpg with the real offline dlib stack."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from dladiff_app.core.events import Event, PhotoDone, Progress
from dladiff_app.core.jobs import ProtectJob
from dladiff_app.core.presets import Layers, ProtectionSettings
from dladiff_app.core.results import IdentityScore, result_from_record
from dladiff_app.engine.face_results import join_faces, subject_scores
from dladiff_app.engine.runner import run_job
from dladiff_app.engine.services import build_kit
from tests.engine.real_photos import t1_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _score(value: float) -> tuple[IdentityScore, ...]:
    return (IdentityScore("dlib", "euclidean", value, 0.6, value < 0.6),)


def test_join_pairs_each_face_with_the_same_position_in_the_shared_copy() -> None:
    # Clean photo 1000x500; the shared copy is half the size and lists the faces in another order.
    on_file = [((100.0, 100.0, 200.0, 220.0), _score(0.9)), ((600.0, 50.0, 700.0, 170.0), _score(0.8))]
    on_shared = [((300.0, 25.0, 350.0, 85.0), _score(0.7)), ((50.0, 50.0, 100.0, 110.0), _score(0.65))]
    faces = join_faces(on_file, (500, 1000, 3), on_shared, (250, 500, 3))
    assert [f.box for f in faces] == [on_file[0][0], on_file[1][0]]
    assert faces[0].scores_after_sharing == _score(0.65)
    assert faces[1].scores_after_sharing == _score(0.7)
    assert subject_scores(on_file) == _score(0.9)


def test_a_face_the_shared_copy_lost_has_no_after_sharing_scores() -> None:
    on_file = [((100.0, 100.0, 200.0, 220.0), _score(0.9)), ((600.0, 50.0, 700.0, 170.0), _score(0.8))]
    on_shared = [((300.0, 25.0, 350.0, 85.0), _score(0.7))]
    faces = join_faces(on_file, (500, 1000, 3), on_shared, (250, 500, 3))
    assert faces[0].scores_after_sharing == () and faces[1].scores_after_sharing == _score(0.7)
    # A clean photo without a face has no per-face entry (its note stays in the headline).
    assert join_faces([(None, _score(0.1))], (10, 10, 3), [], (10, 10, 3)) == ()


def test_group_photo_reports_every_face_and_the_eta_counts_faces(tmp_path: Path) -> None:
    from dladiff_app.engine.faces.dlib_detect import DlibDetector
    from dladiff_app.engine.faces.dlib_resnet import DlibEncoder

    (tmp_path / "in").mkdir()
    photo = tmp_path / "in" / "t1.jpg"
    shutil.copyfile(t1_path(), photo)
    settings = ProtectionSettings(preset="custom", eps=8.0, layers=Layers.ZEROSHOT,
                                  layer2_steps=2, polish_steps=0)
    detector, encoders = DlibDetector(), [DlibEncoder.load()]
    kit = build_kit(settings, device="cpu", detector=detector, encoders=encoders,
                    cache_dir=tmp_path / "cache")
    events: list[Event] = []
    job = ProtectJob(inputs=(photo,), output_dir=tmp_path / "out", settings=settings)
    assert run_job(job, kit, events.append).done == 1
    result = next(e.result for e in events if isinstance(e, PhotoDone))
    assert result.faces == 6 and len(result.per_face) == 6
    assert result.scores == result.per_face[0].scores  # the headline is the largest face
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in (f.box for f in result.per_face)]
    assert areas == sorted(areas, reverse=True)
    for face in result.per_face:
        (score,) = face.scores
        assert score.encoder == "dlib" and score.value is not None
        x0, y0, x1, y1 = face.box
        assert 0 <= x0 < x1 <= result.width and 0 <= y0 < y1 <= result.height
    assert sum(bool(f.scores_after_sharing) for f in result.per_face) >= 5
    # The manifest keeps the faces too (and they come back from it).
    (manifest,) = (tmp_path / "out").rglob("manifest.json")
    record: dict[str, Any] = json.loads(manifest.read_text())["photos"][0]
    assert len(record["per_face"]) == 6
    assert result_from_record(record).per_face == result.per_face
    # The zero-shot steps were counted once per face: 6 faces x 2 steps + save + score.
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[-1].overall == pytest.approx(1.0)
    layer2 = [e for e in progress if e.stage == "layer2"]
    assert layer2 and max(e.step for e in layer2) == 2
