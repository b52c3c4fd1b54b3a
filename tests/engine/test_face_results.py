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
    # How visible the change is on the faces: core.visibility on the same pixels (the clean
    # photo, the file as written) and the same face boxes, carried into the manifest.
    from dladiff_app.core.imageio import load_image
    from dladiff_app.core.visibility import face_visibility

    vis = face_visibility(load_image(photo).pixels, load_image(Path(result.output)).pixels,
                          [f.box for f in result.per_face])
    assert vis is not None and vis.faces == 6
    assert (result.face_ssim, result.face_de_mean, result.face_de_p95) == pytest.approx(
        (vis.ssim, vis.de_mean, vis.de_p95), rel=1e-9)
    assert 0 < result.face_de_mean < 10 and result.face_ssim < 1  # type: ignore[operator]
    assert record["face_de_mean"] == pytest.approx(vis.de_mean, rel=1e-9)
    # The zero-shot steps were counted once per face: 6 faces x 2 steps + save + score.
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[-1].overall == pytest.approx(1.0)
    layer2 = [e for e in progress if e.stage == "layer2"]
    assert layer2 and max(e.step for e in layer2) == 2


def test_measure_saved_gives_the_face_figures_of_core_visibility() -> None:
    """On a real photo and its 8-bit protected copy: the figures measure_saved carries are
    core.visibility's on the same pixels and boxes; without a face there are none."""
    import numpy as np

    from dladiff_app.core.visibility import face_visibility
    from dladiff_app.engine.face_results import measure_saved
    from tests.engine.real_photos import astronaut

    clean = astronaut()
    rng = np.random.default_rng(0)
    saved = np.rint(np.clip(clean + rng.uniform(-6, 6, clean.shape) / 255, 0, 1) * 255
                    ).astype(np.uint8)
    box = (170.0, 40.0, 290.0, 190.0)

    def faces(_clean: np.ndarray, _other: np.ndarray) -> Any:
        return [(box, _score(0.7))]

    m = measure_saved(clean, saved, lambda a, b: [], faces)
    vis = face_visibility(clean, saved, [box])
    assert m.face == vis and vis is not None
    assert (m.face_ssim, m.face_de_mean, m.face_de_p95) == (vis.ssim, vis.de_mean, vis.de_p95)
    assert 0.5 < vis.de_mean < 5 and vis.ssim < 1
    none = measure_saved(clean, saved, lambda a, b: [], lambda a, b: [])
    assert none.face is None and (none.face_ssim, none.face_de_mean, none.face_de_p95) == (
        None, None, None)
