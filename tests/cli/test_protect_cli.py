"""``dladiff protect`` end to end: exit codes, bad files, JSON lines, and a run killed with
SIGKILL mid-batch that is resumed and finishes every photo exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dladiff_app.cli.main import main
from dladiff_app.cli.protect_cmd import long_job_warning
from dladiff_app.core.jobs import ProtectJob
from dladiff_app.core.journal import JOURNAL_NAME, Journal
from dladiff_app.core.presets import Layers, preset
from tests.engine.test_runner import make_album

ROOT = Path(__file__).resolve().parents[2]
TINY_STEPS = ["--rounds", "1", "--pgd-steps", "2", "--lora-steps", "1", "--prior-steps", "2",
              "--layer2-steps", "3", "--polish-steps", "0"]


# One BLAS thread: on the shared 2-core test machine two busy-waiting threads run the tiny
# models many times slower (the same reason the engine tests pin torch to one thread).
_CHILD_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLADIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DLADIFF_DEVICE", "cpu")


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"x")
    assert main(["protect", str(photo)]) == 2
    assert "-o OUT" in capsys.readouterr().err
    assert main(["protect", "-o", str(tmp_path / "o")]) == 2
    assert main(["protect", str(photo), "-o", str(tmp_path / "o"), "--quality", "0"]) == 2
    assert "quality must be 1-100" in capsys.readouterr().err
    assert main(["protect", str(photo), "-o", str(tmp_path / "o"), "--eps", "99"]) == 2
    assert main(["protect", "--resume", str(tmp_path / "empty")]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["protect", str(photo), "-o", str(tmp_path / "o"), "--layers", "nope"]) == 2
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / JOURNAL_NAME).write_text('{"kind": "job", "v": 1, "job": {}}\n')
    assert main(["protect", "--resume", str(damaged)]) == 2
    assert "journal is damaged or was written by another version" in capsys.readouterr().err


def test_hours_warning_for_full_sd_on_cpu(tmp_path: Path) -> None:
    job = ProtectJob(inputs=(tmp_path,), output_dir=tmp_path / "o", settings=preset("medium"))
    full = {"weights_bytes": 4_000_000_000}
    text = long_job_warning(job, "cpu", full, 4)
    assert text is not None and "hours" in text and "--layers zeroshot" in text
    zero = ProtectJob(inputs=(tmp_path,), output_dir=tmp_path / "o",
                      settings=preset("medium").with_overrides(layers=Layers.ZEROSHOT))
    assert long_job_warning(zero, "cpu", full, 4) is None
    assert long_job_warning(job, "cuda", full, 4) is None  # no measured table for GPUs
    assert long_job_warning(job, "cpu", {"weights_bytes": 7_000_000}, 4) is None  # tiny model


def test_bad_files_are_named_and_exit_1(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    make_album(tmp_path / "in")
    rc = main(["--json", "protect", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
               "--layers", "zeroshot", "--layer2-steps", "1", "--eps", "4"])
    assert rc == 1
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    failed = {Path(e["source"]).name: e["reason"] for e in events if e["event"] == "PhotoFailed"}
    assert set(failed) == {"truncated.jpg", "letter.jpg", "anim.gif"}
    assert all(name in reason for name, reason in failed.items())
    done = [e for e in events if e["event"] == "PhotoDone"]
    assert len(done) == 2 and all(Path(e["result"]["output"]).is_file() for e in done)
    unprotected = [e for e in events if e["event"] == "PhotoUnprotected"]
    assert [Path(e["source"]).name for e in unprotected] == ["sky.png"]
    assert events[-1]["event"] == "JobFinished"
    assert any(e["event"] == "Progress" and e["eta_s"] is not None for e in events)
    # Human output names each bad file too.
    out2 = tmp_path / "out2"
    assert main(["protect", str(tmp_path / "in" / "letter.jpg"), "-o", str(out2)]) == 1
    err = capsys.readouterr()
    assert "letter.jpg" in err.out + err.err and "failed" in err.err
    # The same folder again without --resume is a usage error, nothing is touched.
    assert main(["protect", str(tmp_path / "in"), "-o", str(tmp_path / "out")]) == 2


@pytest.mark.slow
def test_sigkill_mid_batch_then_resume_protects_each_photo_once(tiny_sd_dir: Path,
                                                                tmp_path: Path) -> None:
    paths = make_album(tmp_path / "anna")
    for bad in ("truncated", "text", "gif"):
        paths[bad].unlink()
    originals = {p: p.read_bytes() for p in (tmp_path / "anna").iterdir()}
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dladiff_app.cli.main", "--json", "protect",
           str(tmp_path / "anna"), "-o", str(out), "--pipeline", str(tiny_sd_dir), *TINY_STEPS]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=_CHILD_ENV)
    assert proc.stdout is not None
    deadline = time.monotonic() + 240
    killed_after = None
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "PhotoDone":
            killed_after = event["result"]["source"]
            os.kill(proc.pid, signal.SIGKILL)
            break
        assert time.monotonic() < deadline, "no photo finished in time"
    proc.wait(timeout=30)
    assert killed_after is not None and proc.returncode == -signal.SIGKILL
    journal = Journal(out)
    states = {Path(e.source).name: e.state for e in journal.photos.values()}
    assert list(states.values()).count("done") == 1, states
    rc = subprocess.run([sys.executable, "-m", "dladiff_app.cli.main", "protect", "--resume",
                         str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env=_CHILD_ENV)
    assert rc.returncode == 0, rc.stderr[-2000:]
    journal = Journal(out)
    assert journal.problems() == []
    assert sorted(e.done_count for e in journal.photos.values()) == [1, 1, 1]
    visible = sorted(p.name for p in (out / "anna").iterdir() if not p.name.startswith("."))
    # sky.png has no face, but the fine-tuning shield protected it.
    assert visible == ["IMG_0042-protected.png", "astronaut_flip-protected.png", "manifest.json",
                       "report.html", "sky-protected.png"]
    assert {p: p.read_bytes() for p in (tmp_path / "anna").iterdir()} == originals
    doc = json.loads((out / "anna" / "manifest.json").read_text())
    assert len(doc["photos"]) == 3 and doc["unprotected"] == []
    # The resumed run used the journaled --pipeline: every photo got the fine-tuning shield.
    assert all("layer1" in p["layers_done"] for p in doc["photos"]), doc["photos"]


def test_results_table_lists_each_encoder_saved_and_shared() -> None:
    from dladiff_app.cli.protect_cmd import results_table
    from dladiff_app.core.results import IdentityScore, PhotoResult

    saved = IdentityScore("dlib", "euclidean", 1.02, 0.6, False)
    shared = IdentityScore("dlib", "euclidean", 0.98, 0.6, False)
    arc = IdentityScore("buffalo_l", "cosine", 0.71, 0.3, True)
    table = results_table([
        PhotoResult(source="/in/group.jpg", output="/out/group-protected.png", width=10,
                    height=10, seconds=1.0, scores=(saved, arc), scores_after_sharing=(shared,),
                    psnr=40.8, ssim=0.98, linf=8.0, faces=6, face_ssim=0.9812,
                    face_de_mean=1.62, face_de_p95=3.1),
        PhotoResult(source="/in/sky.png", output="/out/sky-protected.png", width=10, height=10,
                    seconds=1.0, faces=0),
    ]).splitlines()
    assert table[0].split()[:3] == ["photo", "faces", "encoder"]
    assert "group.jpg" in table[2] and "1.020 different person" in table[2]
    assert "0.980 different person" in table[2] and "40.8" in table[2] and "8/255" in table[2]
    assert "0.710 same person" in table[3] and "group.jpg" not in table[3]
    # The change on the faces, in words against the just-noticeable difference (~2.3).
    assert "change on the face" in table[0]
    assert "barely visible (ΔE 1.6, SSIM 0.981)" in table[2]
    assert "barely visible" not in table[3]
    assert table[4].split()[:3] == ["sky.png", "0", "-"] and table[4].endswith("-")
    # Verdicts come with what they cannot promise; a table without any verdict has no note.
    from dladiff_app.core.score_words import UNSEEN_MODELS_NOTE

    assert table[5] == UNSEEN_MODELS_NOTE and len(table) == 6
    unscored = PhotoResult(source="/in/sky.png", output="/out/sky-protected.png", width=10,
                           height=10, seconds=1.0, faces=0)
    assert UNSEEN_MODELS_NOTE not in results_table([unscored])


def test_photos_without_a_face_exit_3_and_are_named(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    paths = make_album(tmp_path / "in")
    for bad in ("truncated", "text", "gif", "sideways"):
        paths[bad].unlink()
    rc = main(["protect", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--layers",
               "zeroshot", "--layer2-steps", "1", "--eps", "4"])
    err = capsys.readouterr()
    assert rc == 3
    assert "NOT PROTECTED sky.png: no face found in sky.png" in err.out
    assert "1 photo(s) are NOT protected" in err.err and "1 NOT protected" in err.out
    names = sorted(p.name for p in (tmp_path / "out" / "in").iterdir())
    assert "astronaut_flip-protected.png" in names and not any("sky" in n for n in names)
    # Only the zero-shot shield ran: the run says so in words, and ends with its report.
    assert "not protected against fine-tuning (DreamBooth/LoRA)" in err.out
    report = tmp_path / "out" / "in" / "report.html"
    assert err.out.rstrip().splitlines()[-1] == f"Report: {report}" and report.is_file()
    assert "not protected against fine-tuning" in report.read_text(encoding="utf-8")
    assert _finished_counts(err.out) == 2  # each photo counted once

    # Again: the face is done already, the photo without one is still named, counted once.
    main(["protect", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--layers", "zeroshot",
          "--layer2-steps", "1", "--eps", "4", "--resume"])
    again = capsys.readouterr().out
    assert "1 already done, 1 NOT protected" in again and _finished_counts(again) == 2


def _finished_counts(out: str) -> int:
    """The sum of the counts on the run's "Finished in M:SS: ..." line."""
    import re

    line, = (x for x in out.splitlines() if x.startswith("Finished in "))
    return sum(int(n) for n in re.findall(r"(\d+) [a-zA-Z]", line.split(": ", 1)[1]))
    assert "3 finished, but some photos are NOT protected" in subprocess.run(
        [sys.executable, "-m", "dladiff_app.cli.main", "protect", "--help"], cwd=ROOT,
        capture_output=True, text=True, env=_CHILD_ENV, timeout=120).stdout.replace("\n", " ")


def test_a_preset_with_one_shield_keeps_its_name() -> None:
    from dladiff_app.cli.main import build_parser
    from dladiff_app.cli.protect_cmd import budgets_line, build_job

    parser = build_parser()
    job = build_job(parser.parse_args(["protect", "a.png", "-o", "out", "--preset", "medium",
                                       "--layers", "zeroshot"]))
    assert job.settings.preset == "medium" and job.settings.layers is Layers.ZEROSHOT
    assert budgets_line(job.settings).startswith("Budgets (preset medium): zero-shot shield")
    # A change of strength is no longer the preset.
    job = build_job(parser.parse_args(["protect", "a.png", "-o", "out", "--preset", "medium",
                                       "--eps", "9"]))
    assert job.settings.preset == "custom"


def _five_faces(folder: Path) -> None:
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True)
    astro = Image.fromarray(data.astronaut())
    for i, (box, flip) in enumerate([((60, 0, 400, 300), False), ((80, 10, 380, 280), True),
                                     ((40, 0, 360, 320), False), ((100, 20, 420, 300), True),
                                     ((70, 0, 350, 260), False)]):
        img = astro.crop(box)
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img.save(folder / f"face{i}.png")


@pytest.mark.slow
def test_kill_9_at_five_moments_then_resume_from_elsewhere_finishes_each_photo_once(
        tmp_path: Path) -> None:
    """kill -9 at five points of a photo's life (job start, mid-shield, while scoring the
    encoded file, after the file appeared, after "done"), each followed by ``--resume`` from
    another working directory: every photo ends protected exactly once, with its layers."""
    _five_faces(tmp_path / "anna")
    originals = {p: p.read_bytes() for p in (tmp_path / "anna").iterdir()}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    first = ["protect", "anna", "-o", "out", "--layers", "zeroshot", "--layer2-steps", "2"]
    resume = ["protect", "--resume", "../out"]
    moments = [
        lambda e: e["event"] == "JobStarted",
        lambda e: e["event"] == "Progress" and e["stage"] == "layer2",
        # Another photo than the one killed mid-shield: a photo the process dies on twice is
        # skipped as "failed repeatedly (out of memory?)".
        lambda e: (e["event"] == "Progress" and e["stage"] == "score" and e["step"] == 0
                   and e["photo_id"] == 1),
        lambda e: e["event"] == "Progress" and e["stage"] == "save" and e["step"] == 1,
        lambda e: e["event"] == "PhotoDone",
    ]
    for n, moment in enumerate(moments):
        args, cwd = (first, tmp_path) if n == 0 else (resume, elsewhere)
        proc = subprocess.Popen([sys.executable, "-m", "dladiff_app.cli.main", "--json", *args],
                                cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=_CHILD_ENV)
        assert proc.stdout is not None
        for line in proc.stdout:
            if moment(json.loads(line)):
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=120)
        assert proc.returncode == -signal.SIGKILL, (n, proc.returncode, proc.stderr.read())
        proc.stderr.close()
        proc.stdout.close()
    done = subprocess.run([sys.executable, "-m", "dladiff_app.cli.main", *resume], cwd=elsewhere,
                          capture_output=True, text=True, timeout=300, env=_CHILD_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    journal = Journal(tmp_path / "out")
    assert journal.problems() == []
    assert sorted(e.done_count for e in journal.photos.values()) == [1] * 5
    names = sorted(p.name for p in (tmp_path / "out" / "anna").iterdir())
    assert names == [f"face{i}-protected.png" for i in range(5)] + ["manifest.json",
                                                                    "report.html"]
    doc = json.loads((tmp_path / "out" / "anna" / "manifest.json").read_text())
    assert len(doc["photos"]) == 5
    assert all(p["layers_done"] == ["layer2"] and p["scores"] for p in doc["photos"])
    assert {p: p.read_bytes() for p in (tmp_path / "anna").iterdir()} == originals


def test_terminal_progress_names_stages_in_words() -> None:
    import io

    from dladiff_app.cli.protect_cmd import Printer
    from dladiff_app.core.events import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Terminal()
    printer = Printer(io.StringIO(), err, as_json=False)
    printer(Progress("layer2", 3, 3, 0.5, 12.0, None))
    assert "zero-shot" in err.getvalue() and "layer2" not in err.getvalue()
