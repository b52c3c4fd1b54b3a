"""The app's engine services (``build_services``): one model store shared by the model manager
and the protect kits, local copies persisted in the settings, and measured time estimates.

Real pieces only: the tiny random Stable Diffusion folder as the user's local SD copy, the
offline dlib face pack for faces, a real settings file, a real protect job.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.events import Event, PhotoDone
from dladiff_app.core.jobs import ProtectJob
from dladiff_app.core.presets import Layers, ProtectionSettings
from dladiff_app.core.settings import Settings, load_settings
from dladiff_app.engine.estimate import Calibration, estimate_job
from dladiff_app.engine.services import build_services

ROOT = Path(__file__).resolve().parents[2]
TINY_L1 = ProtectionSettings(preset="custom", eps=8.0, layers=Layers.FINETUNE, layer1_rounds=1,
                             layer1_pgd_steps=2, layer1_lora_steps=1, prior_steps=1,
                             layer2_steps=0, polish_steps=0)
ZERO = ProtectionSettings(preset="custom", eps=8.0, layers=Layers.ZEROSHOT, layer2_steps=50,
                          polish_steps=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLADIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DLADIFF_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("DLADIFF_OFFLINE", "1")  # a download attempt would fail the test
    monkeypatch.delenv("DLADIFF_DEVICE", raising=False)


def test_services_module_imports_without_torch() -> None:
    code = ("import sys, dladiff_app.engine.services as s; assert 'torch' not in sys.modules, "
            "'torch imported'; assert callable(s.build_services)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_local_sd_copy_is_saved_and_used_by_the_next_job(tiny_sd_dir: Path,
                                                         tmp_path: Path) -> None:
    from tests.fixtures.tiny_sd import TINY_SD_RESOLUTION

    settings_file = tmp_path / "my-settings.json"
    first = build_services(Settings(device="cpu"), settings_path=settings_file)
    assert not {r.id: r for r in first.models.list_models()}["sd15"].present
    probe = ProtectJob(inputs=(tmp_path,), output_dir=tmp_path / "o", settings=TINY_L1)
    assert first.protect.kit_for(probe).layer1 is None  # no SD yet: layer 1 would be skipped
    first.models.use_local("sd15", str(tiny_sd_dir))
    # The model manager and the protect service share one store: the same app sees it at once.
    assert first.protect.kit_for(probe).layer1 is not None
    saved = load_settings(settings_file)
    assert saved.model_paths == {"sd15": str(tiny_sd_dir.resolve())}
    assert saved.device == "cpu"

    # A later session: a fresh app reads the settings file and protects with that copy.
    services = build_services(saved, settings_path=settings_file,
                              working_size=TINY_SD_RESOLUTION)  # the tiny model's size
    row = {r.id: r for r in services.models.list_models()}["sd15"]
    assert (row.present, row.source, row.path) == (True, "local", str(tiny_sd_dir.resolve()))
    assert services.device.describe().kind == "cpu"
    photo = tmp_path / "in" / "p.png"
    photo.parent.mkdir()
    grad = np.linspace(0, 255, 72 * 80 * 3).reshape(72, 80, 3).astype(np.uint8)
    Image.fromarray(grad).save(photo)
    job = ProtectJob(inputs=(photo,), output_dir=tmp_path / "out", settings=TINY_L1)
    events: list[Event] = []
    summary = services.protect.protect(job, events.append, CancelToken())
    assert (summary.done, summary.failed) == (1, 0)
    result = next(e.result for e in events if isinstance(e, PhotoDone))
    assert result.layers_done == ("layer1",)
    kit = services.protect.kit_for(job)
    assert kit.models["sd_pipeline"]["path"] == str(tiny_sd_dir.resolve())
    assert not (tmp_path / "cache" / "models" / "sd15").exists()  # nothing was downloaded

    # The kit measured its layer-1 step: the estimate uses it instead of the CPU table.
    est = services.protect.estimate(2, TINY_L1, megapixels=0.5)
    assert "measured step" in est.note and math.isfinite(est.total_s) and est.total_s > 0
    measured = kit.layer1_step_seconds() if kit.layer1_step_seconds else None
    assert measured is not None and math.isfinite(measured) and measured > 0


def test_zero_shot_estimate_is_measured_finite_and_grows(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from dladiff_app.engine import services as services_mod

    runs: list[object] = []
    real_calibrate = services_mod.calibrate

    def counting_calibrate(*args: object, **kwargs: object) -> Calibration:
        runs.append(args)
        return real_calibrate(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(services_mod, "calibrate", counting_calibrate)
    services = build_services(Settings(device="cpu"))
    one = services.protect.estimate_seconds(1, ZERO, megapixels=2.0)
    assert math.isfinite(one) and one > 0 and len(runs) == 1
    assert services.protect.estimate_seconds(1, ZERO, megapixels=2.0) == one
    assert len(runs) == 1  # calibrated once, then cached
    assert services.protect.estimate_seconds(4, ZERO, megapixels=2.0) > 3.5 * one
    more_steps = ZERO.with_overrides(layer2_steps=200)
    assert services.protect.estimate_seconds(1, more_steps, megapixels=2.0) > 2 * one
    cal = services.protect.calibration("cpu")
    assert "dlib" in cal.encoders and cal.layer2_step_s > 0 and cal.detect_s_per_mp > 0
    # No SD anywhere: layer 1 cannot run, so a "both" job costs what its zero-shot part costs.
    both = ZERO.with_overrides(layers=Layers.BOTH)
    assert services.protect.estimate_seconds(1, both, megapixels=2.0) == pytest.approx(one)


def test_gpu_without_a_measured_step_leaves_only_layer1_unknown() -> None:
    cal = Calibration(layer2_step_s=0.1, embed_s=0.02, detect_s_per_mp=0.05, encoders=("dlib",))
    both = ProtectionSettings(layers=Layers.BOTH, polish_steps=0)
    gpu = estimate_job(3, both, 12.0, cal, layer1_available=True, pgd_step_s=None,
                       device_kind="cuda")
    assert math.isnan(gpu.layer1_s) and math.isnan(gpu.total_s)
    assert math.isfinite(gpu.per_photo_s) and gpu.per_photo_s > both.layer2_steps * 0.1
    assert "unknown until the first step" in gpu.note
    cpu = estimate_job(3, both, 12.0, cal, layer1_available=True, pgd_step_s=None,
                       device_kind="cpu")
    assert cpu.layer1_s > 3600  # the CPU table for full SD 1.5: hours
    measured = estimate_job(3, both, 12.0, cal, layer1_available=True, pgd_step_s=0.5,
                            device_kind="cuda")
    assert 0 < measured.layer1_s < cpu.layer1_s and math.isfinite(measured.total_s)


def test_estimate_is_per_detected_face_and_a_photo_without_one_costs_detection_only() -> None:
    cal = Calibration(layer2_step_s=0.1, embed_s=0.02, detect_s_per_mp=0.05, encoders=("dlib",))
    zs = ProtectionSettings(layers=Layers.ZEROSHOT, layer2_steps=100)

    def total(faces: list[int] | None, n: int = 2) -> float:
        return estimate_job(n, zs, 1.0, cal, layer1_available=False, pgd_step_s=None,
                            device_kind="cpu", faces=faces).total_s

    one_each = total(None)
    assert total([1, 1]) == pytest.approx(one_each)  # the old assumption, stated
    group = total([6, 1])
    per_face = 100 * 0.1 + 4 * 0.02
    assert group - one_each == pytest.approx(5 * per_face)
    no_face = total([0, 0])
    assert no_face == pytest.approx(2 * 0.05 * (3 * 1.0 + 2 * min(1.0, 1080 * 810 / 1e6)))
    assert no_face < 0.05 * one_each
    with pytest.raises(ValueError, match="3 entries for 2 photos"):
        total([1, 1, 1])


def test_count_faces_uses_the_protection_detector_and_remembers_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.engine.real_photos import t1_path

    sky = tmp_path / "sky.png"
    Image.fromarray(np.full((64, 96, 3), 200, np.uint8)).save(sky)
    services = build_services(Settings(device="cpu"))
    paths = [t1_path(), sky, tmp_path / "gone.jpg"]
    assert services.protect.count_faces(paths) == [6, 0, None]
    from dladiff_app.core import imageio

    read: list[Path] = []
    real_load = imageio.load_image

    def counting_load(path: Path, *args: object, **kwargs: object) -> imageio.LoadedImage:
        read.append(Path(path))
        return real_load(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(imageio, "load_image", counting_load)
    assert services.protect.count_faces(paths[:1]) == [6]
    assert read == []  # remembered, not read and detected again
    sky.write_bytes(sky.read_bytes())  # rewritten: a new modification time
    os.utime(sky, ns=(0, 10**9))
    assert services.protect.count_faces([sky]) == [0] and read == [sky]


def test_measure_scores_an_exported_copy_like_the_runner(tmp_path: Path) -> None:
    from skimage import data

    from dladiff_app.core.imageio import load_image
    from dladiff_app.core.quality import psnr

    clean = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(clean)
    copy = tmp_path / "astronaut-q40.jpg"
    Image.fromarray(data.astronaut()).save(copy, quality=40)
    services = build_services(Settings(device="cpu"))
    result = services.protect.measure(clean, copy)
    assert result.output == str(copy) and (result.width, result.height) == (512, 512)
    assert result.psnr == pytest.approx(psnr(load_image(clean).pixels, load_image(copy).pixels),
                                        abs=1e-3)
    assert len(result.per_face) == 1 and result.scores == result.per_face[0].scores
    assert {s.encoder for s in result.scores} >= {"dlib"}
    assert all(s.same_person for s in result.scores)  # a JPEG of the clean photo: same person


def test_manifest_names_a_single_file_checkpoint_with_its_size(tmp_path: Path) -> None:
    from dladiff_app.engine.services import _pipeline_identity

    checkpoint = tmp_path / "my-sd.safetensors"
    checkpoint.write_bytes(b"\0" * 1234)
    info = _pipeline_identity(checkpoint)
    assert info["path"] == str(checkpoint) and info["weights_bytes"] == 1234


def test_job_scores_never_compare_the_subject_with_another_person(pack) -> None:  # type: ignore[no-untyped-def]
    """Group photo whose largest face is gone in the "protected" copy: the scorer must say the
    face is missing, not score another person's face as the subject's ("different person")."""
    from dladiff_app.engine.faces.dlib_detect import DlibDetector
    from dladiff_app.engine.faces.dlib_resnet import DlibEncoder
    from dladiff_app.engine.services import make_scorer
    from tests.engine import real_photos

    clean = np.array(real_photos.t1())  # writable, as a loaded photo is
    detector = DlibDetector(pack=pack)
    subject = detector.detect(clean)[0]
    x0, y0, x1, y1 = (int(v) for v in subject.box)
    hidden = np.array(clean)
    hidden[max(0, y0 - 20):y1 + 20, max(0, x0 - 20):x1 + 20] = 0.5
    assert len(detector.detect(hidden)) >= 1  # the other people are still there
    (score,) = make_scorer(detector, [DlibEncoder.load(pack.recognition)])(clean, hidden)
    assert score.value is None and score.same_person is None
    assert score.note == "no face at this position in the protected image"
