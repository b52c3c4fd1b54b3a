"""End-to-end runs of the job runner with the real layers: the tiny random Stable Diffusion
pipeline for layer 1 and the real offline dlib face stack for layer 2 and for scoring."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import JobConflictError
from dladiff_app.core.events import (
    Event,
    JobCancelled,
    PhotoDone,
    PhotoFailed,
    PhotoUnprotected,
    Progress,
)
from dladiff_app.core.imageio import load_image
from dladiff_app.core.jobs import ExportOptions, OutputFormat, ProtectJob
from dladiff_app.core.journal import Journal
from dladiff_app.core.presets import Layers, ProtectionSettings
from dladiff_app.engine.runner import EngineKit, run_job
from dladiff_app.engine.services import build_kit
from tests.fixtures.manifest_schema import validate_manifest

TINY = ProtectionSettings(preset="custom", eps=8.0, eps_ft=5.0, layers=Layers.BOTH,
                          layer1_rounds=1, layer1_pgd_steps=2, layer1_denoise_steps=1,
                          layer1_lora_steps=1, prior_steps=2, layer2_steps=6, polish_steps=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _detector() -> Any:
    from dladiff_app.engine.faces.dlib_detect import DlibDetector

    return DlibDetector()


@pytest.fixture(scope="module")
def dlib_parts() -> tuple[Any, list[Any]]:
    from dladiff_app.engine.faces.dlib_resnet import DlibEncoder

    return _detector(), [DlibEncoder.load()]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_album(folder: Path) -> dict[str, Path]:
    """Two real face photos (one stored sideways with EXIF orientation 6 and GPS), one photo
    without a face, and three bad files."""
    from skimage import data

    folder.mkdir(parents=True)
    astro = Image.fromarray(data.astronaut())
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: stored rotated, shown upright after a 90 degree turn
    exif[0x010F] = "TestCam"  # Make
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (48.0, 51.0, 24.0)
    paths = {"sideways": folder / "IMG_0042.jpg"}
    astro.crop((0, 0, 512, 384)).transpose(Image.Transpose.ROTATE_90).save(
        paths["sideways"], "JPEG", quality=95, exif=exif.tobytes())
    paths["png"] = folder / "astronaut_flip.png"
    astro.transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((40, 0, 440, 300)).save(paths["png"])
    paths["noface"] = folder / "sky.png"
    grad = np.linspace(0, 255, 96 * 128 * 3).reshape(96, 128, 3).astype(np.uint8)
    Image.fromarray(grad).save(paths["noface"])
    buf = io.BytesIO()
    astro.save(buf, "JPEG")
    paths["truncated"] = folder / "truncated.jpg"
    paths["truncated"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    paths["text"] = folder / "letter.jpg"
    paths["text"].write_text("this is not a photo")
    paths["gif"] = folder / "anim.gif"
    astro.resize((64, 64)).save(paths["gif"], "GIF")
    return paths


def _kit(tiny_sd_dir: Path, tmp_path: Path, dlib_parts: tuple[Any, list[Any]],
         settings: ProtectionSettings = TINY) -> EngineKit:
    from tests.fixtures.tiny_sd import TINY_SD_RESOLUTION

    detector, encoders = dlib_parts
    return build_kit(settings, device="cpu", pipeline_dir=tiny_sd_dir, detector=detector,
                     encoders=encoders, working_size=TINY_SD_RESOLUTION,
                     cache_dir=tmp_path / "cache")


@pytest.mark.slow
def test_album_end_to_end_with_bad_files(tiny_sd_dir: Path, tmp_path: Path,
                                         dlib_parts: tuple[Any, list[Any]]) -> None:
    paths = make_album(tmp_path / "anna")
    before = {k: _sha(p) for k, p in paths.items()}
    out = tmp_path / "out"
    (out / "anna").mkdir(parents=True)
    squatter = out / "anna" / "IMG_0042-protected.png"  # a user's file where our name would go
    squatter.write_bytes(b"user data")
    events: list[Event] = []
    job = ProtectJob(inputs=(tmp_path / "anna",), output_dir=out, settings=TINY,
                     export=ExportOptions(format=OutputFormat.PNG))
    summary = run_job(job, _kit(tiny_sd_dir, tmp_path, dlib_parts), events.append)
    failed = {Path(e.source).name: e.reason for e in events if isinstance(e, PhotoFailed)}
    assert set(failed) == {"truncated.jpg", "letter.jpg", "anim.gif"}
    assert all(name in reason for name, reason in failed.items())
    # sky.png has no face but the fine-tuning shield changed it: protected (against that).
    assert (summary.done, summary.failed, summary.unprotected, summary.cancelled) == (
        3, 3, 0, False)
    assert {k: _sha(p) for k, p in paths.items()} == before  # originals only read
    assert squatter.read_bytes() == b"user data"             # never overwritten
    done = {Path(e.result.source).name: e.result for e in events if isinstance(e, PhotoDone)}
    assert Path(done["IMG_0042.jpg"].output).name == "IMG_0042-protected-2.png"
    assert not [e for e in events if isinstance(e, PhotoUnprotected)]
    assert done["sky.png"].layers_done == ("layer1",)
    assert any("No face found in sky.png" in w for w in done["sky.png"].warnings)
    for name, res in done.items():
        src = load_image(tmp_path / "anna" / name).pixels
        saved = load_image(Path(res.output)).pixels
        assert saved.shape == src.shape  # orientation applied, size kept
        # Layer 1's budget on the whole photo; the zero-shot one on top of it on faces.
        bound = 5.0 if res.layers_done == ("layer1",) else 5.0 + 8.0
        assert res.linf is not None and 0 < res.linf <= bound + 1e-3
        assert float(np.abs(saved - src).max()) * 255 <= bound + 1e-3
    sideways = done["IMG_0042.jpg"]
    assert (sideways.height, sideways.width) == (384, 512)
    from skimage import data

    upright = data.astronaut()[:384].astype(np.float32) / 255  # what the camera saw
    assert float(np.abs(load_image(Path(sideways.output)).pixels - upright).mean()) < 0.03
    assert sideways.layers_done == ("layer1", "layer2", "polish")
    # The manifest records the steps that ran (test_layer1 counts them), not rounds x steps.
    assert sideways.extra["steps"]["layer1_lora"] == (
        (TINY.layer1_rounds - 1) * TINY.layer1_lora_steps)
    assert sideways.extra["steps"]["layer1_pgd"] == 3  # 1 epoch x (2 + 1) PGD steps
    layer1 = sideways.extra["layer1"]
    assert (layer1["objective"], layer1["eps_ft"], sideways.extra["eps_ft"]) == (
        "attention", 5.0, 5.0)
    assert [e["epoch"] for e in layer1["epochs"]] == [1]
    assert layer1["epochs"][0]["l_att"] > 0 and layer1["epochs"][0]["dyn_finetune"] is None
    assert "joint steps" in sideways.extra["layer_notes"]["polish"]
    assert sideways.scores and sideways.scores[0].value is not None
    assert sideways.scores_after_sharing and sideways.psnr is not None
    with Image.open(sideways.output) as img:
        assert not img.getexif()  # no EXIF, so no GPS, unless --keep-metadata
    progress = [e for e in events if isinstance(e, Progress)]
    assert {"prior", "layer1", "layer2", "polish", "save", "score"} <= {p.stage for p in progress}
    assert progress[-1].overall == pytest.approx(1.0) and progress[-1].eta_s is not None
    manifest = (out / "anna" / "manifest.json").read_text()
    import json

    doc = json.loads(manifest)
    assert validate_manifest(doc) == [] and len(doc["photos"]) == 3 and len(doc["failed"]) == 3
    assert doc["unprotected"] == []
    assert doc["models"]["sd_pipeline"]["path"] == str(tiny_sd_dir)
    html = (out / "anna" / "report.html").read_text()
    assert html.count("data:image/jpeg;base64,") == 6
    from dladiff_app.core.score_words import UNSEEN_MODELS_NOTE

    assert UNSEEN_MODELS_NOTE in html  # the verdicts come with what they cannot promise
    journal = Journal(out)
    assert journal.problems() == []
    # A second run into the same folder must not mix jobs; a resume redoes nothing.
    with pytest.raises(JobConflictError):
        run_job(job, _kit(tiny_sd_dir, tmp_path, dlib_parts), events.append)
    files_before = sorted(p.name for p in (out / "anna").iterdir())
    again: list[Event] = []
    resumed = run_job(ProtectJob(**{**job.__dict__, "resume": True}),
                      _kit(tiny_sd_dir, tmp_path, dlib_parts), again.append)
    assert (resumed.done, resumed.skipped, resumed.unprotected) == (0, 3, 0)
    assert sorted(p.name for p in (out / "anna").iterdir()) == files_before


def test_keep_metadata_jpeg_drops_gps_keeps_camera(tmp_path: Path,
                                                   dlib_parts: tuple[Any, list[Any]]) -> None:
    paths = make_album(tmp_path / "in")
    settings = ProtectionSettings(preset="custom", eps=4.0, layers=Layers.ZEROSHOT,
                                  layer2_steps=2, polish_steps=0)
    detector, encoders = dlib_parts
    kit = build_kit(settings, device="cpu", detector=detector, encoders=encoders,
                    cache_dir=tmp_path / "cache")
    job = ProtectJob(inputs=(paths["sideways"],), output_dir=tmp_path / "out", settings=settings,
                     export=ExportOptions(format=OutputFormat.JPEG, quality=90,
                                          keep_metadata=True))
    events: list[Event] = []
    assert run_job(job, kit, events.append).done == 1
    out = next(e.result.output for e in events if isinstance(e, PhotoDone))
    with Image.open(out) as img:
        exif = img.getexif()
        assert exif.get(0x010F) == "TestCam" and 0x8825 not in exif and 0x0112 not in exif
        assert img.size == (512, 384)  # shown upright, as the original was taken


def test_cancel_then_resume_finishes_each_photo_once(tmp_path: Path,
                                                     dlib_parts: tuple[Any, list[Any]]) -> None:
    paths = make_album(tmp_path / "in")
    for bad in ("truncated", "text", "gif"):
        paths[bad].unlink()
    settings = ProtectionSettings(preset="custom", eps=8.0, layers=Layers.ZEROSHOT,
                                  layer2_steps=3, polish_steps=0)
    detector, encoders = dlib_parts
    kit = build_kit(settings, device="cpu", detector=detector, encoders=encoders,
                    cache_dir=tmp_path / "cache")
    cancel = CancelToken()
    events: list[Event] = []

    def sink(event: Event) -> None:
        events.append(event)
        if isinstance(event, PhotoDone):
            cancel.cancel()

    job = ProtectJob(inputs=(tmp_path / "in",), output_dir=tmp_path / "out", settings=settings)
    first = run_job(job, kit, sink, cancel)
    assert first.cancelled and first.done == 1
    assert isinstance(events[-1], JobCancelled)
    second = run_job(ProtectJob(**{**job.__dict__, "resume": True}), kit, events.append)
    assert (second.done, second.skipped, second.unprotected, second.cancelled) == (
        1, 1, 1, False)
    outputs = sorted(p.name for p in (tmp_path / "out" / "in").glob("*-protected*"))
    assert outputs == ["IMG_0042-protected.png", "astronaut_flip-protected.png"]
    assert Journal(tmp_path / "out").problems() == []


def test_blocked_album_folder_fails_its_photos_and_the_batch_goes_on(
        tmp_path: Path, dlib_parts: tuple[Any, list[Any]]) -> None:
    paths = make_album(tmp_path / "a")
    (tmp_path / "b").mkdir()
    other = tmp_path / "b" / "sky2.png"
    other.write_bytes(paths["png"].read_bytes())  # a face: protected
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("a file where the album folder would go")
    settings = ProtectionSettings(preset="custom", eps=4.0, layers=Layers.ZEROSHOT,
                                  layer2_steps=1, polish_steps=0)
    detector, encoders = dlib_parts
    kit = build_kit(settings, device="cpu", detector=detector, encoders=encoders,
                    cache_dir=tmp_path / "cache")
    events: list[Event] = []
    job = ProtectJob(inputs=(paths["noface"], other), output_dir=out, settings=settings)
    summary = run_job(job, kit, events.append)
    assert (summary.done, summary.failed) == (1, 1)
    reason = next(e.reason for e in events if isinstance(e, PhotoFailed))
    assert reason.startswith("sky.png: Could not write") and str(out / "a") in reason
    assert (out / "b" / "sky2-protected.png").is_file()


def test_a_crash_inside_the_fine_tuning_shield_fails_its_album_not_the_job(
        tmp_path: Path) -> None:
    """An untyped error (e.g. a RuntimeError from CUDA) in layer 1 is reported per photo, and
    the next album still runs: the GUI's engine thread must never see a raw traceback."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.full((64, 80, 3), 120, np.uint8)).save(tmp_path / name / "p.png")
    calls: list[int] = []

    def broken_layer1(images: list[Any], cancel: CancelToken, step: Any) -> Any:
        calls.append(len(images))
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    kit = EngineKit(device_kind="cpu", device_name="CPU", detector=None, score=lambda a, b: [],
                    layer1=broken_layer1)
    settings = ProtectionSettings(preset="custom", eps=4.0, layers=Layers.FINETUNE)
    job = ProtectJob(inputs=(tmp_path / "a", tmp_path / "b"), output_dir=tmp_path / "out",
                     settings=settings)
    events: list[Event] = []
    summary = run_job(job, kit, events.append)
    assert calls == [1, 1]  # the second album ran after the first one crashed
    assert (summary.done, summary.failed, summary.cancelled) == (0, 2, False)
    reasons = [e.reason for e in events if isinstance(e, PhotoFailed)]
    assert len(reasons) == 2 and all(
        r.startswith("p.png: the fine-tuning shield failed: internal error (RuntimeError: CUDA")
        for r in reasons), reasons
    assert not list((tmp_path / "out").rglob("*-protected*"))


def test_resume_adopts_a_numbered_file_whose_name_has_glob_characters(tmp_path: Path) -> None:
    """``[`` in a photo name must not turn the search for ``name-2.png`` into a glob class."""
    from dladiff_app.core.albums import Album
    from dladiff_app.core.journal import sha256_bytes
    from dladiff_app.engine.runner import _Photo, _Run

    source = tmp_path / "in" / "party [1].png"
    out = tmp_path / "out"
    (out / "in").mkdir(parents=True)
    planned = out / "in" / "party [1]-protected.png"
    planned.write_bytes(b"someone else's file")
    written = out / "in" / "party [1]-protected-2.png"
    written.write_bytes(b"our protected photo")
    job = ProtectJob(inputs=(source,), output_dir=out, settings=ProtectionSettings())
    run = _Run(job, EngineKit("cpu", "CPU", None, lambda a, b: []), lambda e: None,
               CancelToken())
    run.journal.start_job(job)
    photo = _Photo(0, source, Album("in", (source,)), str(source))
    run.journal_state(photo, "writing", planned=str(planned),
                      sha256=sha256_bytes(written.read_bytes()))
    assert run.written_before(photo) == written


def test_photos_inside_the_output_folder_fail_with_the_reason(tmp_path: Path) -> None:
    """``dladiff protect ~/Pictures/me -o ~/Pictures`` used to finish with 0 photos and no word,
    and any missing input crashed the job (progress divided by an empty plan)."""
    folder = tmp_path / "pics" / "me"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((64, 80, 3), 120, np.uint8)).save(folder / "p.png")
    kit = EngineKit(device_kind="cpu", device_name="CPU", detector=None, score=lambda a, b: [])
    job = ProtectJob(inputs=(folder, tmp_path / "nope.jpg"), output_dir=tmp_path / "pics",
                     settings=ProtectionSettings(layers=Layers.ZEROSHOT))
    events: list[Event] = []
    summary = run_job(job, kit, events.append)
    assert (summary.done, summary.failed) == (0, 2)
    reasons = sorted(e.reason for e in events if isinstance(e, PhotoFailed))
    assert reasons[0].startswith("me: this folder is inside the output folder")
    assert reasons[1] == "nope.jpg: the file or folder does not exist"
    assert [e for e in events if isinstance(e, Progress)][-1].overall == 1.0
    assert list(folder.iterdir()) == [folder / "p.png"]
