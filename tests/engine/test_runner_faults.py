"""Batches that never stall: every file name, duplicate photos, crashes that repeat, resumes that
change nothing they should not. Each test reproduces one defect found by a fault probe."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dladiff_app.core.errors import NothingToProtectError, OutputError
from dladiff_app.core.events import Event, PhotoDone, PhotoFailed, PhotoSkipped
from dladiff_app.core.journal import JOURNAL_NAME, Journal
from dladiff_app.core.presets import Layers, ProtectionSettings
from dladiff_app.engine.runner import run_job
from tests.engine.light_kit import light_kit, make_photos
from tests.engine.test_runner_batches import _job, _run
from tests.fixtures.manifest_schema import validate_manifest


def _manifest(folder: Path) -> dict[str, Any]:
    doc = json.loads((folder / "manifest.json").read_bytes())
    assert validate_manifest(doc) == []
    return doc  # type: ignore[no-any-return]


# ------------------------------------------------------------------ names that are not UTF-8
@pytest.mark.skipif(os.name == "nt", reason="Windows names are UTF-16, never undecodable")
def test_a_name_that_is_not_utf8_is_protected_and_resumed(tmp_path: Path) -> None:
    (plain,) = make_photos(tmp_path / "in", ["a.png"])
    # A name holding bytes that are not UTF-8 (as cameras and older systems write them).
    (other,) = make_photos(tmp_path / "src", ["b.png"], seed=3)
    shutil.copyfile(other, os.fsencode(tmp_path / "in") + b"/caf\xe9.png")
    out = tmp_path / "out"
    summary, events = _run(_job((tmp_path / "in",), out))
    assert (summary.done, summary.failed) == (2, 0), [e for e in events
                                                      if isinstance(e, PhotoFailed)]
    names = sorted(os.listdir(os.fsencode(out / "in")))
    assert b"caf\xe9-protected.png" in names  # the output keeps the original bytes
    # The journal is valid UTF-8 and gives the exact name back.
    (out / JOURNAL_NAME).read_bytes().decode("utf-8")
    sources = {os.fsencode(e.source) for e in Journal(out).photos.values()}
    assert os.fsencode(tmp_path / "in") + b"/caf\xe9.png" in sources
    assert Journal(out).problems() == []
    doc = _manifest(out / "in")
    assert len(doc["photos"]) == 2
    assert "caf\\xe9.png" in (out / "in" / "report.html").read_text(encoding="utf-8")
    # Every resume finds both photos done instead of crashing on the odd one.
    again, _ = _run(_job((tmp_path / "in",), out, resume=True))
    assert (again.done, again.skipped, again.failed) == (0, 2, 0)
    assert plain.is_file()


def test_a_failure_that_cannot_be_journaled_does_not_end_the_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_photos(tmp_path / "in", ["a.png", "b-bad.png", "c.png"])
    original = Journal.set_state

    def set_state(self: Journal, key: str, state: str, **fields: Any) -> None:
        if "b-bad" in str(fields.get("source")):
            raise OutputError(self.path, "this record cannot be written")
        original(self, key, state, **fields)

    monkeypatch.setattr(Journal, "set_state", set_state)
    summary, events = _run(_job((tmp_path / "in",), tmp_path / "out"))
    assert (summary.done, summary.failed) == (2, 1)
    failed = [e for e in events if isinstance(e, PhotoFailed)]
    assert [Path(e.source).name for e in failed] == ["b-bad.png"]


# ------------------------------------------------------------------ identical bytes
def test_photos_with_identical_bytes_are_separate_photos(tmp_path: Path) -> None:
    (first,) = make_photos(tmp_path / "in", ["IMG_0001.png"])
    for name in ("IMG_0001 (1).png", "IMG_0001 (2).png"):
        shutil.copyfile(first, tmp_path / "in" / name)
    out = tmp_path / "out"
    summary, events = _run(_job((tmp_path / "in",), out))
    assert summary.done == 3
    outputs = {Path(e.result.source).name: Path(e.result.output).name
               for e in events if isinstance(e, PhotoDone)}
    assert outputs == {"IMG_0001.png": "IMG_0001-protected.png",
                       "IMG_0001 (1).png": "IMG_0001 (1)-protected.png",
                       "IMG_0001 (2).png": "IMG_0001 (2)-protected.png"}
    assert not any("Protected again" in w for e in events if isinstance(e, PhotoDone)
                   for w in e.result.warnings)
    journal = Journal(out)
    assert journal.problems() == [] and len(journal.photos) == 3
    assert sorted(Path(p["source"]).name for p in _manifest(out / "in")["photos"]) == sorted(
        outputs)
    # A resume finds each copy's own file, also when one more copy is added in front.
    shutil.copyfile(first, tmp_path / "in" / "A_copy.png")
    again, events = _run(_job((tmp_path / "in",), out, resume=True))
    assert (again.done, again.skipped) == (1, 3)
    skipped = {Path(e.source).name: e.result.output for e in events
               if isinstance(e, PhotoSkipped) and e.result is not None}
    assert {k: Path(v).name for k, v in skipped.items()} == outputs
    assert Journal(out).problems() == []
    assert len(_manifest(out / "in")["photos"]) == 4


# ------------------------------------------------------------------ models installed since
def test_a_face_model_installed_before_resume_redoes_nothing(tmp_path: Path) -> None:
    make_photos(tmp_path / "in", ["a.png", "b.png"])
    out = tmp_path / "out"
    first, _ = _run(_job((tmp_path / "in",), out))
    assert first.done == 2
    kit = light_kit()
    kit.model_revisions = {"encoders": ["pixel_change", "edgeface"]}  # installed since
    events: list[Event] = []
    again = run_job(_job((tmp_path / "in",), out, resume=True), kit, events.append)
    assert (again.done, again.skipped) == (0, 2)
    assert sorted(p.name for p in (out / "in").glob("*-protected*")) == [
        "a-protected.png", "b-protected.png"]
    reasons = [e.reason for e in events if isinstance(e, PhotoSkipped)]
    assert all("earlier run with the face models installed then" in r for r in reasons)
    assert len(_manifest(out / "in")["photos"]) == 2


def test_protecting_again_names_the_budgets_alike(tmp_path: Path) -> None:
    make_photos(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    _run(_job((tmp_path / "in",), out))
    high = ProtectionSettings(preset="high", eps=12.0, layers=Layers.ZEROSHOT, layer2_steps=3,
                              polish_steps=0)
    _, events = _run(_job((tmp_path / "in",), out, high, resume=True), eps=12.0)
    (done,) = [e.result for e in events if isinstance(e, PhotoDone)]
    (warning,) = [w for w in done.warnings if "Protected again" in w]
    assert "budget 12/255" in warning and "budget 4/255" in warning and "4.0/255" not in warning


# ------------------------------------------------------------------ crashes that repeat
_CRASHING_RUN = """
import os, signal, sys
from pathlib import Path
from dladiff_app.core.jobs import ProtectJob
from dladiff_app.engine.runner import run_job
from tests.engine.light_kit import light_kit
from tests.engine.test_runner_batches import LOW

kit = light_kit()
shield = kit.layer2

def layer2(clean, start, faces, cancel, step):
    if clean.shape[-1] == 200:  # the big photo: the process dies as it would out of memory
        os.kill(os.getpid(), signal.SIGKILL)
    return shield(clean, start, faces, cancel, step)

kit.layer2 = layer2
run_job(ProtectJob(inputs=(Path(sys.argv[1]),), output_dir=Path(sys.argv[2]), settings=LOW,
                   resume=True), kit, lambda event: None)
"""


def test_a_photo_that_crashed_twice_is_skipped_and_the_rest_finishes(tmp_path: Path) -> None:
    make_photos(tmp_path / "in", ["a.png", "c.png"])
    make_photos(tmp_path / "in", ["big.png"], size=(150, 200), seed=2)
    out = tmp_path / "out"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", _CRASHING_RUN, str(tmp_path / "in"),
                               str(out)], cwd=root, env=env, capture_output=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert sorted(p.name for p in (out / "in").glob("*-protected.png")) == ["a-protected.png"]
    summary, events = _run(_job((tmp_path / "in",), out, resume=True))
    assert (summary.done, summary.skipped, summary.failed) == (1, 1, 1)
    (failed,) = [e for e in events if isinstance(e, PhotoFailed)]
    assert Path(failed.source).name == "big.png"
    assert "failed repeatedly (out of memory?)" in failed.reason
    assert sorted(p.name for p in (out / "in").glob("*-protected.png")) == [
        "a-protected.png", "c-protected.png"]
    doc = _manifest(out / "in")
    assert [Path(f["source"]).name for f in doc["failed"]] == ["big.png"]
    # It stays skipped, without another attempt.
    again, events = _run(_job((tmp_path / "in",), out, resume=True))
    assert (again.done, again.skipped, again.failed) == (0, 2, 1)
    assert max(e.attempts for e in Journal(out).photos.values()) == 2


def test_a_cancelled_photo_is_not_counted_as_a_crash(tmp_path: Path) -> None:
    from dladiff_app.core.cancel import CancelToken

    make_photos(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    for _ in range(3):
        token = CancelToken()
        kit = light_kit()
        shield = kit.layer2
        assert shield is not None

        def layer2(*args: Any, token: CancelToken = token, shield: Any = shield) -> Any:
            token.cancel()
            return shield(*args)

        kit.layer2 = layer2
        summary = run_job(_job((tmp_path / "in",), out, resume=True), kit, lambda e: None,
                          token)
        assert summary.cancelled
    summary, _ = _run(_job((tmp_path / "in",), out, resume=True))
    assert (summary.done, summary.failed) == (1, 0)


# ------------------------------------------------------------------ album names
def test_a_folder_added_before_resume_leaves_the_albums_where_they_were(tmp_path: Path) -> None:
    make_photos(tmp_path / "lib" / "2022" / "Camera", ["b.png"])
    out = tmp_path / "out"
    first, _ = _run(_job((tmp_path / "lib",), out, recursive=True))
    assert first.done == 1 and (out / "Camera" / "b-protected.png").is_file()
    make_photos(tmp_path / "lib" / "2021" / "Camera", ["a.png"], seed=5)
    again, _ = _run(_job((tmp_path / "lib",), out, recursive=True, resume=True))
    assert (again.done, again.skipped) == (1, 1)
    assert [Path(p["source"]).name for p in _manifest(out / "Camera")["photos"]] == ["b.png"]
    assert [Path(p["source"]).name for p in _manifest(out / "2021-Camera")["photos"]] == [
        "a.png"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "2021-Camera", "Camera"]


# ------------------------------------------------------------------ no Stable Diffusion
def test_without_stable_diffusion_each_photo_and_the_report_say_which_shield_ran(
        tmp_path: Path) -> None:
    from dladiff_app.core.events import Notice

    make_photos(tmp_path / "anna", ["a.png", "b.png"])
    make_photos(tmp_path / "bo", ["c.png"], seed=4)
    both = ProtectionSettings(preset="low", eps=4.0, layers=Layers.BOTH, layer2_steps=3,
                              polish_steps=0)
    out = tmp_path / "out"
    summary, events = _run(_job((tmp_path / "anna", tmp_path / "bo"), out, both))
    assert summary.done == 3
    missing = "The fine-tuning shield is not part of this test kit."
    assert [e.message for e in events if isinstance(e, Notice)].count(missing) == 1
    for album in ("anna", "bo"):
        doc = _manifest(out / album)
        assert all(missing in p["warnings"] and p["layers_done"] == ["layer2"]
                   for p in doc["photos"])
        html = (out / album / "report.html").read_text(encoding="utf-8")
        assert "shields: zero-shot only (fine-tuning and zero-shot asked for)" in html
        assert "shields: fine-tuning and zero-shot." not in html
        assert "not protected against fine-tuning (DreamBooth/LoRA)" in html


# ------------------------------------------------------------------ manifest sources
def test_manifest_sources_are_absolute_whatever_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_photos(tmp_path / "in", ["a.png"])
    monkeypatch.chdir(tmp_path)
    _run(_job((Path("in") / "a.png",), Path("out")))
    make_photos(tmp_path / "in", ["b.png"], seed=6)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    again, _ = _run(_job((tmp_path / "in",), tmp_path / "out", resume=True))
    assert (again.done, again.skipped) == (1, 1)
    sources = [p["source"] for p in _manifest(tmp_path / "out" / "in")["photos"]]
    assert sources == [str(tmp_path / "in" / "a.png"), str(tmp_path / "in" / "b.png")]


# ------------------------------------------------------------------ odd picture files
def test_an_animation_is_protected_from_its_first_frame_and_says_so(tmp_path: Path) -> None:
    from PIL import Image

    from dladiff_app.core.events import Notice

    (still,) = make_photos(tmp_path / "src", ["f.png"])
    first = Image.open(still).convert("RGB")
    second = Image.new("RGB", first.size, (20, 200, 20))
    (tmp_path / "in").mkdir()
    first.save(tmp_path / "in" / "wave.png", save_all=True, append_images=[second])
    first.save(tmp_path / "in" / "wave.webp", save_all=True, append_images=[second],
               lossless=True)
    summary, events = _run(_job((tmp_path / "in",), tmp_path / "out"))
    assert summary.done == 2
    notes = [e.message for e in events if isinstance(e, Notice)]
    for name in ("wave.png", "wave.webp"):
        assert any(n.startswith(f"{name} holds 2 frames") for n in notes), notes
    assert all(any("only the first was protected" in w for w in p["warnings"])
               for p in _manifest(tmp_path / "out" / "in")["photos"])


# ------------------------------------------------------------------ what discovery leaves out
def test_a_recursive_job_does_not_protect_an_earlier_jobs_copies(tmp_path: Path) -> None:
    from dladiff_app.core.events import Notice

    make_photos(tmp_path / "lib" / "anna", ["a.png"])
    first, _ = _run(_job((tmp_path / "lib" / "anna",), tmp_path / "lib" / "out"))
    assert first.done == 1
    make_photos(tmp_path / "lib" / "bo", ["b.png"], seed=7)
    summary, events = _run(_job((tmp_path / "lib",), tmp_path / "out2", recursive=True))
    assert summary.done == 2  # anna/a.png and bo/b.png, not out/anna/a-protected.png
    done = sorted(Path(e.result.source).name for e in events if isinstance(e, PhotoDone))
    assert done == ["a.png", "b.png"]
    assert any("Skipped" in e.message and "earlier DLADiff job" in e.message
               for e in events if isinstance(e, Notice))
    # Naming the earlier job's album folder itself is refused the same way.
    with pytest.raises(NothingToProtectError, match="earlier DLADiff job"):
        _run(_job((tmp_path / "lib" / "out" / "anna",), tmp_path / "out3"))


def test_a_folder_of_sub_folders_without_recursive_says_how(tmp_path: Path) -> None:
    make_photos(tmp_path / "trip" / "day1", ["a.png"])
    with pytest.raises(NothingToProtectError, match=r"only sub-folders.*-r in the command line"):
        _run(_job((tmp_path / "trip",), tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ files that look like ours
def test_a_resume_removes_only_its_own_temporary_files(tmp_path: Path) -> None:
    make_photos(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    _run(_job((tmp_path / "in",), out))
    mine = [out / ".notes.txt.0123456789ab.tmp", out / "in" / ".holiday.jpg.abcdefabcdef.tmp"]
    for path in mine:
        path.write_bytes(b"the user's")
    ours = [out / "in" / ".a-protected.png.0123456789ab.tmp",
            out / "in" / ".manifest.json.0123456789ab.tmp",
            out / "in" / ".x-unprotected.png.0123456789ab.tmp"]
    for path in ours:
        path.write_bytes(b"half a file")
    _run(_job((tmp_path / "in",), out, resume=True))
    assert all(p.read_bytes() == b"the user's" for p in mine)
    assert not any(p.exists() for p in ours)


def test_album_names_of_a_journal_without_album_origins_stay(tmp_path: Path) -> None:
    make_photos(tmp_path / "lib" / "2022" / "Camera", ["b.png"])
    out = tmp_path / "out"
    _run(_job((tmp_path / "lib",), out, recursive=True))
    # As an older version wrote it: album records without their folder.
    lines = (out / JOURNAL_NAME).read_text(encoding="utf-8").splitlines()
    (out / JOURNAL_NAME).write_text("\n".join(
        line for line in lines if '"origin"' not in line) + "\n", encoding="utf-8")
    make_photos(tmp_path / "lib" / "2021" / "Camera", ["a.png"], seed=5)
    again, _ = _run(_job((tmp_path / "lib",), out, recursive=True, resume=True))
    assert (again.done, again.skipped) == (1, 1)
    assert [Path(p["source"]).name for p in _manifest(out / "Camera")["photos"]] == ["b.png"]
    assert (out / "2021-Camera" / "a-protected.png").is_file()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "2021-Camera", "Camera"]
