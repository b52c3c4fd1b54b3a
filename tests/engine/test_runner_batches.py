"""Batch behaviour a user must be able to trust (issue 14), each test reproducing one defect:
photos without a face reported as protected, re-protecting at another strength keeping the old
file, resume from another directory redoing photos, two processes in one job folder, crash
leftovers, adopted photos losing their layers, odd inputs crashing or hanging the job."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dladiff_app.core.errors import JobLockedError, NothingToProtectError
from dladiff_app.core.events import (
    Event,
    PhotoDone,
    PhotoFailed,
    PhotoSkipped,
    PhotoUnprotected,
)
from dladiff_app.core.joblock import JobLock
from dladiff_app.core.jobs import ExportOptions, ProtectJob
from dladiff_app.core.journal import JOURNAL_NAME, Journal
from dladiff_app.core.presets import Layers, ProtectionSettings
from dladiff_app.engine.runner import run_job
from tests.engine.light_kit import light_kit, make_photos
from tests.fixtures.manifest_schema import validate_manifest

ROOT = Path(__file__).resolve().parents[2]
LOW = ProtectionSettings(preset="low", eps=4.0, layers=Layers.ZEROSHOT, layer2_steps=3,
                         polish_steps=0)
HIGH = ProtectionSettings(preset="high", eps=12.0, layers=Layers.ZEROSHOT, layer2_steps=3,
                          polish_steps=0)


def _job(inputs: tuple[Path, ...], out: Path, settings: ProtectionSettings = LOW,
         **kw: Any) -> ProtectJob:
    return ProtectJob(inputs=inputs, output_dir=out, settings=settings, **kw)


def _run(job: ProtectJob, **kit: Any) -> tuple[Any, list[Event]]:
    events: list[Event] = []
    return run_job(job, light_kit(**kit), events.append), events


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


# ------------------------------------------------------------------ 1. no face: not protected
def test_a_photo_without_a_face_is_not_protected_and_not_written(tmp_path: Path) -> None:
    make_photos(tmp_path / "in", ["face.png"])
    make_photos(tmp_path / "in", ["noise.png"], faces=False, seed=1)
    summary, events = _run(_job((tmp_path / "in",), tmp_path / "out"))
    assert (summary.done, summary.unprotected, summary.failed) == (1, 1, 0)
    unprotected = [e for e in events if isinstance(e, PhotoUnprotected)]
    assert [Path(e.source).name for e in unprotected] == ["noise.png"]
    assert "no face found in noise.png" in unprotected[0].reason
    assert not any(isinstance(e, PhotoDone) and "noise" in e.result.source for e in events)
    album = tmp_path / "out" / "in"
    assert _visible(album) == ["face-protected.png", "manifest.json", "report.html"]
    doc = json.loads((album / "manifest.json").read_text())
    assert validate_manifest(doc) == []
    assert [Path(p["source"]).name for p in doc["photos"]] == ["face.png"]
    assert doc["unprotected"] == [{"source": str(tmp_path / "in" / "noise.png"),
                                   "reason": unprotected[0].reason, "output": None}]
    html = (album / "report.html").read_text()
    assert "1 protected, 1 not protected" in html and "<strong>not protected</strong>" in html
    # A resume keeps saying so (it is not silently counted as done).
    again, events = _run(_job((tmp_path / "in",), tmp_path / "out", resume=True))
    assert (again.done, again.skipped, again.unprotected) == (0, 2, 1)


def test_unprotected_photos_are_exported_only_on_request_and_named_so(tmp_path: Path) -> None:
    make_photos(tmp_path / "in", ["noise.png"], faces=False)
    export = ExportOptions(export_unprotected=True)
    summary, events = _run(_job((tmp_path / "in",), tmp_path / "out", export=export))
    assert summary.unprotected == 1 and summary.done == 0
    event = next(e for e in events if isinstance(e, PhotoUnprotected))
    assert event.output is not None and Path(event.output).name == "noise-unprotected.png"
    assert _visible(tmp_path / "out" / "in") == ["manifest.json", "noise-unprotected.png",
                                                 "report.html"]
    doc = json.loads((tmp_path / "out" / "in" / "manifest.json").read_text())
    assert validate_manifest(doc) == [] and doc["unprotected"][0]["output"] == event.output


# ------------------------------------------------------------------ 2. settings-aware journal
def test_protecting_again_at_another_strength_writes_a_new_file(tmp_path: Path) -> None:
    make_photos(tmp_path / "in", ["a.png", "b.png"])
    out = tmp_path / "out"
    first, _ = _run(_job((tmp_path / "in",), out, LOW))
    assert first.done == 2
    before = {p: p.read_bytes() for p in (out / "in").glob("*-protected.png")}
    second, events = _run(_job((tmp_path / "in",), out, HIGH, resume=True), eps=12.0)
    assert (second.done, second.skipped) == (2, 0)  # other settings: protected again
    assert {p: p.read_bytes() for p in before} == before  # the earlier files are kept
    assert _visible(out / "in") == ["a-protected-2.png", "a-protected.png", "b-protected-2.png",
                                    "b-protected.png", "manifest.json", "report.html"]
    done = [e.result for e in events if isinstance(e, PhotoDone)]
    assert all(r.linf is not None and r.linf > 4 for r in done)  # really the new strength
    assert all(any("Protected again with other settings" in w and "a-protected.png" in w
                   or "b-protected.png" in w for w in r.warnings) for r in done)
    doc = json.loads((out / "in" / "manifest.json").read_text())
    assert validate_manifest(doc) == []
    assert sorted((Path(p["source"]).name, p["preset"]) for p in doc["photos"]) == [
        ("a.png", "high"), ("a.png", "low"), ("b.png", "high"), ("b.png", "low")]
    html = (out / "in" / "report.html").read_text()
    assert "preset high at 12.0/255" in html and "preset low at 4.0/255" in html
    # The same strength once more: nothing is redone, and the earlier result comes along.
    third, events = _run(_job((tmp_path / "in",), out, HIGH, resume=True), eps=12.0)
    assert (third.done, third.skipped) == (0, 2)
    skipped = [e for e in events if isinstance(e, PhotoSkipped)]
    assert all(e.result is not None and Path(e.result.output).is_file() for e in skipped)
    assert Journal(out).problems() == []


def test_renamed_photo_keeps_its_protection(tmp_path: Path) -> None:
    (photo,) = make_photos(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    _run(_job((photo,), out))
    moved = photo.rename(tmp_path / "in" / "renamed.png")
    again, events = _run(_job((moved,), out, resume=True))
    assert (again.done, again.skipped) == (0, 1)


# ------------------------------------------------------------------ 3. job folder
def test_resume_from_another_working_directory_redoes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_photos(tmp_path / "in", ["a.png", "b.png"])
    monkeypatch.chdir(tmp_path)
    job = _job((Path("in"),), Path("out"))  # relative, as typed on a command line
    assert _run(job)[0].done == 2
    raw = (tmp_path / "out" / JOURNAL_NAME).read_text()
    outputs = [json.loads(line).get("output") for line in raw.splitlines()]
    assert "in/a-protected.png" in outputs  # stored relative to the job folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again, _ = _run(_job((tmp_path / "in",), tmp_path / "out", resume=True))
    assert (again.done, again.skipped) == (0, 2)
    assert _visible(tmp_path / "out" / "in") == ["a-protected.png", "b-protected.png",
                                                 "manifest.json", "report.html"]
    journal = Journal(tmp_path / "out")
    assert journal.problems() == [] and {e.done_count for e in journal.photos.values()} == {1}


def test_a_second_process_is_refused_while_a_job_runs(tmp_path: Path) -> None:
    make_photos(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom dladiff_app.core.joblock import JobLock\n"
         "lock = JobLock(sys.argv[1]); lock.acquire(); print('held', flush=True)\n"
         "time.sleep(120)", str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(JobLockedError, match=f"process {holder.pid}"):
            _run(_job((tmp_path / "in",), out))
        assert not (out / JOURNAL_NAME).exists() and not (out / "in").exists()
        from dladiff_app.cli.main import main

        rc = main(["protect", str(tmp_path / "in"), "-o", str(out), "--layers", "zeroshot"])
        assert rc == 2
    finally:
        holder.send_signal(signal.SIGKILL)  # like kill -9: the lock file stays behind
        holder.wait(timeout=30)
    assert (out / ".dladiff-lock").exists()
    assert _run(_job((tmp_path / "in",), out))[0].done == 1  # a dead holder blocks nothing


def test_the_lock_is_exclusive_within_one_process_too(tmp_path: Path) -> None:
    with JobLock(tmp_path / "out"), pytest.raises(JobLockedError, match=f"process {os.getpid()}"):
        JobLock(tmp_path / "out").acquire()
    with JobLock(tmp_path / "out"):  # released on exit
        pass


def test_resume_removes_crash_leftovers_and_adopted_photos_keep_layers(tmp_path: Path) -> None:
    make_photos(tmp_path / "in", ["a.png", "b.png"])
    out = tmp_path / "out"
    first, events = _run(_job((tmp_path / "in",), out))
    original = {Path(e.result.source).name: e.result for e in events if isinstance(e, PhotoDone)}
    # Make it look like kill -9 hit after b's file was published, before "done" was journaled,
    # while a temporary file was being written.
    lines = (out / JOURNAL_NAME).read_text().splitlines()
    b_done = max(i for i, line in enumerate(lines)
                 if '"state":"done"' in line and "b.png" in line)
    (out / JOURNAL_NAME).write_text("\n".join(lines[:b_done]) + "\n")
    leftover = out / "in" / ".b-protected.png.0123456789ab.tmp"
    leftover.write_bytes(b"half a file")
    again, events = _run(_job((tmp_path / "in",), out, resume=True))
    assert (again.done, again.skipped) == (1, 1)
    assert not leftover.exists()
    adopted = next(e.result for e in events if isinstance(e, PhotoDone))
    assert Path(adopted.source).name == "b.png"
    assert adopted.layers_done == ("layer2",) == original["b.png"].layers_done
    assert adopted.scores == original["b.png"].scores and adopted.psnr == original["b.png"].psnr
    doc = json.loads((out / "in" / "manifest.json").read_text())
    assert all(p["layers_done"] == ["layer2"] for p in doc["photos"])
    journal = Journal(out)
    assert journal.problems() == [] and {e.done_count for e in journal.photos.values()} == {1}


# ------------------------------------------------------------------ 4. odd inputs
def test_an_empty_job_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".hidden.png").write_bytes(b"x")
    with pytest.raises(NothingToProtectError, match="no photo to protect"):
        _run(_job((tmp_path / "empty",), tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    from dladiff_app.cli.main import main

    assert main(["protect", str(tmp_path / "empty"), "-o", str(tmp_path / "out"),
                 "--layers", "zeroshot"]) == 2
    assert not (tmp_path / "out" / JOURNAL_NAME).exists()


def test_fifo_symlink_loop_and_unreadable_folder_fail_with_reasons(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_photos(tmp_path / "in", ["a.png"])
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_iterdir = Path.iterdir

    def iterdir(self: Path) -> Any:
        if self == locked:  # the test may run as root, who can read any folder
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    started = time.monotonic()
    summary, events = _run(_job((tmp_path / "in" / "a.png", fifo, loop, locked),
                                tmp_path / "out"))
    assert time.monotonic() - started < 60  # never blocks on the FIFO
    reasons = {Path(e.source).name: e.reason for e in events if isinstance(e, PhotoFailed)}
    assert (summary.done, summary.failed) == (1, 3)
    assert "not a regular file" in reasons["pipe.png"]
    assert "link loop" in reasons["loop.jpg"]
    assert "cannot be read (permission denied)" in reasons["locked"]


def test_long_names_fit_the_file_system(tmp_path: Path) -> None:
    names = ["a" * 230 + ".png", "é" * 120 + ".png"]  # 234 and 244 bytes
    make_photos(tmp_path / "in", names)
    summary, events = _run(_job((tmp_path / "in",), tmp_path / "out"))
    assert (summary.done, summary.failed) == (2, 0), [e for e in events
                                                      if isinstance(e, PhotoFailed)]
    for e in events:
        if isinstance(e, PhotoDone):
            assert len(Path(e.result.output).name.encode()) <= 255
            assert Path(e.result.output).name.endswith("-protected.png")


def test_damaged_journal_records_are_ignored_not_a_crash(tmp_path: Path) -> None:
    make_photos(tmp_path / "in", ["a.png", "b.png"])
    out = tmp_path / "out"
    _run(_job((tmp_path / "in",), out))
    with open(out / JOURNAL_NAME, "a") as fh:
        fh.write('{"kind": "photo", "state": "done"}\n{"kind": "album"}\n'
                 '{"kind": "photo", "key": "x", "state": "exploded"}\n[1, 2]\n')
    journal = Journal(out)
    assert journal.damaged == 4 and journal.job is not None
    again, _ = _run(_job((tmp_path / "in",), out, resume=True))
    assert (again.done, again.skipped) == (0, 2)


def test_mpo_phone_photos_are_protected_from_their_primary_image(tmp_path: Path) -> None:
    from dladiff_app.core.imageio import load_image

    yy, xx = np.mgrid[0:96, 0:128]
    primary = np.stack([xx * 2, yy * 2, 255 - xx], axis=-1).astype(np.uint8)  # smooth: JPEG-safe
    primary[:16, :16] = (255, 0, 0)  # the marker survives JPEG as a block
    gain_map = Image.fromarray(np.full((48, 64, 3), 128, np.uint8))
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "PXL_0001.jpg"
    Image.fromarray(primary).save(path, "MPO", save_all=True, append_images=[gain_map],
                                  quality=98)
    with Image.open(path) as img:
        assert img.format == "MPO" and getattr(img, "n_frames", 1) == 2
    loaded = load_image(path)
    assert loaded.pixels.shape == (96, 128, 3)
    assert float(np.abs(loaded.pixels * 255 - primary).mean()) < 4
    summary, events = _run(_job((path,), tmp_path / "out"))
    assert (summary.done, summary.failed) == (1, 0), events


# ------------------------------------------------------------------ 5. streaming
def test_albums_stream_one_photo_at_a_time_without_the_fine_tuning_shield(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dladiff_app.core.imageio as imageio

    make_photos(tmp_path / "in", [f"p{i}.png" for i in range(5)])
    loaded: list[weakref.ref[np.ndarray]] = []
    real_load = imageio.load_image

    def tracking_load(path: Any, **kw: Any) -> Any:
        result = real_load(path, **kw)
        if Path(path).parent == tmp_path / "in":
            loaded.append(weakref.ref(result.pixels))
        return result

    monkeypatch.setattr(imageio, "load_image", tracking_load)
    alive: list[int] = []

    class Counting(list):  # type: ignore[type-arg]
        def append(self, item: object) -> None:
            gc.collect()
            alive.append(sum(r() is not None for r in loaded))
            super().append(item)

    summary = run_job(_job((tmp_path / "in",), tmp_path / "out"),
                      light_kit(seen=Counting()), lambda e: None)
    assert summary.done == 5
    assert alive == [1, 1, 1, 1, 1]  # each photo decoded only when its turn came


def test_measuring_big_photos_cheaply_gives_the_same_numbers(tmp_path: Path) -> None:
    """The runner measures the saved file in 8 bits, shrinks it before the sharing transform
    and computes PSNR/SSIM by bands (memory); every number must equal the plain computation."""
    from dladiff_app.core.imageio import encode_image, load_image
    from dladiff_app.core.quality import linf_255, psnr, simulate_sharing, ssim
    from dladiff_app.core.quality_bands import banded_quality
    from dladiff_app.engine.face_results import shared_copy
    from dladiff_app.engine.runner import _decode_8bit

    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:1100, 0:1500]
    clean = np.stack([xx / 1500, yy / 1100, (xx + yy) / 2600], -1).astype(np.float32)
    noisy = np.clip(clean + rng.normal(0, 0.02, clean.shape), 0, 1).astype(np.float32)
    data = encode_image(noisy, "png")
    (tmp_path / "p.png").write_bytes(data)
    saved8 = _decode_8bit(data)
    saved = load_image(tmp_path / "p.png").pixels
    assert np.array_equal(saved8.astype(np.float32) / np.float32(255), saved)
    assert np.array_equal(shared_copy(saved8), simulate_sharing(saved))
    assert banded_quality(clean, saved8) == pytest.approx(
        (psnr(clean, saved), ssim(clean, saved), linf_255(clean, saved)), rel=1e-12)


def test_a_version_1_journal_is_resumed_without_redoing_its_photos(tmp_path: Path) -> None:
    """Journals written before photos were keyed by content were keyed by resolved path."""
    from dladiff_app.core.journal import job_to_dict, sha256_bytes

    (photo,) = make_photos(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    job = _job((tmp_path / "in",), out)
    (out / "in").mkdir(parents=True)
    written = out / "in" / "a-protected.png"
    written.write_bytes(b"an earlier protection")
    records = [{"kind": "job", "v": 1, "job": job_to_dict(job)},
               {"kind": "photo", "key": str(photo.resolve()), "album": "in",
                "source": str(photo), "state": "done", "output": str(written),
                "sha256": sha256_bytes(written.read_bytes())}]
    (out / JOURNAL_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))
    again, _ = _run(_job((tmp_path / "in",), out, resume=True))
    assert (again.done, again.skipped) == (0, 1)
    assert _visible(out / "in") == ["a-protected.png"]  # no report: nothing with a result


def test_score_refuses_a_fifo_instead_of_hanging(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    from dladiff_app.cli.main import main
    from dladiff_app.cli.score_cmd import EXIT_BAD_INPUT

    (photo,) = make_photos(tmp_path / "in", ["a.png"])
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    codes: list[int] = []
    worker = threading.Thread(target=lambda: codes.append(main(["score", str(fifo),
                                                                str(photo)])), daemon=True)
    worker.start()
    worker.join(timeout=120)
    if worker.is_alive():  # unblock the reader so the test process can end, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("dladiff score blocked on a FIFO")
    assert codes == [EXIT_BAD_INPUT]
    assert "not a regular file" in capsys.readouterr().err


def test_a_moved_job_folder_resumes_where_it_is_now(tmp_path: Path) -> None:
    import argparse

    from dladiff_app.cli.protect_cmd import build_job

    make_photos(tmp_path / "in", ["a.png", "b.png"])
    _run(_job((tmp_path / "in",), tmp_path / "out"))
    moved = (tmp_path / "out").rename(tmp_path / "moved")
    args = argparse.Namespace(resume=str(moved), output=None, inputs=[], device="auto",
                              pipeline=None)
    job = build_job(args)
    assert job.output_dir == moved and job.resume
    again, _ = _run(job)
    assert (again.done, again.skipped) == (0, 2) and not (tmp_path / "out").exists()
