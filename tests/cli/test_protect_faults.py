"""``dladiff protect`` facing faults: odd file names, bad output folders, interrupts, resumes
with options. Each test reproduces one defect found by a fault probe."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from dladiff_app.cli.main import main
from dladiff_app.cli.protect_cmd import Printer
from dladiff_app.core.events import JobFinished, PhotoFailed
from tests.engine.light_kit import light_kit, make_photos


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLADIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DLADIFF_DEVICE", "cpu")


class _StrictText(io.TextIOWrapper):
    """A UTF-8 stream that refuses what a UTF-8 terminal or pipe refuses."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)

    def text(self) -> str:
        self.flush()
        return self.buffer.getvalue().decode("utf-8")  # type: ignore[attr-defined]


def test_names_that_are_not_utf8_print_in_both_output_modes() -> None:
    source = "/photos/caf\udce9.jpg"  # how Python holds the undecodable byte 0xE9
    event = PhotoFailed(0, source, "caf\udce9.jpg: cannot be read")
    human = _StrictText()
    Printer(human, _StrictText(), as_json=False)(event)
    assert "FAILED  caf\\xe9.jpg: cannot be read" in human.text()
    lines = _StrictText()
    printer = Printer(lines, _StrictText(), as_json=True)
    printer(event)
    printer(JobFinished(0, 1, 0, 1.0))
    first = json.loads(lines.text().splitlines()[0])
    assert first["source"] == source  # JSON keeps the exact name
    assert Path(first["source"]).name == "caf\udce9.jpg"


def test_an_output_folder_that_cannot_hold_a_job_is_refused_at_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (photo,) = make_photos(tmp_path / "in", ["a.png"])
    before = sorted(p.name for p in (tmp_path / "in").iterdir())
    assert main(["protect", str(tmp_path / "in"), "-o", str(tmp_path / "in")]) == 2
    err = capsys.readouterr().err
    assert "is the folder of the photos to protect" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == before  # no journal, no lock
    # The same folder named another way (trailing dot) is the same folder.
    assert main(["protect", str(photo), "-o", str(tmp_path / "in" / ".")]) == 2
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert main(["protect", str(tmp_path / "in"), "-o", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "File exists" not in err
    assert a_file.read_text() == "mine"


def test_a_broken_pipeline_folder_is_one_clear_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_photos(tmp_path / "in", ["a.png"])
    broken = tmp_path / "sd"
    broken.mkdir()
    (broken / "model_index.json").write_text("{}")
    assert main(["protect", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--pipeline",
                 str(broken)]) == 2
    err = capsys.readouterr().err
    assert "does not name a pipeline" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    (broken / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", '
                                             '"unet": ["diffusers", "UNet2DConditionModel"]}')
    assert main(["protect", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--pipeline",
                 str(broken)]) == 2
    assert "lacks its unet folder" in capsys.readouterr().err


def test_a_pipeline_that_fails_while_loading_is_a_typed_error(tmp_path: Path) -> None:
    from dladiff_app.core.errors import ModelIntegrityError
    from dladiff_app.engine.models.loaders import load_sd_pipeline

    (tmp_path / "model_index.json").write_text("{}")  # diffusers raises KeyError for this
    with pytest.raises(ModelIntegrityError, match="Could not load Stable Diffusion"):
        load_sd_pipeline(tmp_path)


def test_a_damaged_job_record_says_how_to_resume_without_contradiction(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import dladiff_app.engine.services as services
    from dladiff_app.core.journal import JOURNAL_NAME

    monkeypatch.setattr(services, "build_kit", lambda *a, **k: light_kit())
    out = tmp_path / "out"
    out.mkdir()
    (out / JOURNAL_NAME).write_text('{"kind":"job","v":2,"job":{"inp\n'
                                    '{"kind":"photo","key":"k","album":"a","source":"/x.png",'
                                    '"state":"queued"}\n')
    make_photos(tmp_path / "in", ["a.png"])
    assert main(["protect", str(tmp_path / "in"), "-o", str(out)]) == 2
    assert "Resume it with --resume" in capsys.readouterr().err
    assert main(["protect", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds no DLADiff job journal" not in err
    assert "record of the job's photos and settings is damaged" in err and "--resume" in err


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_stop_cleanly_with_reports_and_the_resume_hint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        signum: int, code: int) -> None:
    import dladiff_app.engine.services as services

    make_photos(tmp_path / "in", ["a.png", "b.png", "c.png"])
    kit = light_kit()
    shield = kit.layer2
    calls: list[int] = []

    def layer2(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:  # the user presses Ctrl-C (or a service manager stops us)
            os.kill(os.getpid(), signum)
        return shield(*args)  # type: ignore[misc]

    kit.layer2 = layer2
    monkeypatch.setattr(services, "build_kit", lambda *a, **k: kit)
    before = signal.getsignal(signum)
    out = tmp_path / "out"
    rc = main(["protect", str(tmp_path / "in"), "-o", str(out), "--layers", "zeroshot"])
    assert rc == code
    err = capsys.readouterr().err
    assert f"dladiff protect --resume {out}" in err
    doc = json.loads((out / "in" / "manifest.json").read_text())
    assert [Path(p["source"]).name for p in doc["photos"]] == ["a.png"]
    assert (out / "in" / "report.html").is_file()
    assert signal.getsignal(signum) == before and calls == [1, 1]
    # The photo in progress was not counted as a crash: the resume protects the rest.
    kit.layer2 = shield
    assert main(["protect", "--resume", str(out)]) == 0
    assert sorted(p.name for p in (out / "in").glob("*-protected.png")) == [
        "a-protected.png", "b-protected.png", "c-protected.png"]


def test_stop_signals_cancel_first_and_interrupt_second() -> None:
    from dladiff_app.cli.interrupt import stop_on_signals
    from dladiff_app.core.cancel import CancelToken

    token = CancelToken()
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), stop_on_signals(token) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert token.cancelled and stop.exit_code == 143
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == before


def test_the_readme_and_help_list_the_exit_codes_the_cli_returns() -> None:
    from dladiff_app.cli.protect_cmd import EXIT_CODES_HELP

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = readme.split("`dladiff protect` exit codes:")[1].split("\n\n")[1]
    codes = {cell.strip() for row in table.splitlines()[2:] for cell in
             row.split("|")[1].split("/")}
    assert codes == {"0", "1", "2", "3", "130", "143"}
    assert "stopped by Ctrl-C / SIGTERM" in table and "130/143 stopped" in EXIT_CODES_HELP
    assert "cancelled" not in table.splitlines()[3]  # 1 is failures only, not a stop


def test_a_missing_folder_is_not_counted_as_a_photo(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import dladiff_app.engine.services as services

    monkeypatch.setattr(services, "build_kit", lambda *a, **k: light_kit())
    make_photos(tmp_path / "in", ["a.png"])
    assert main(["protect", str(tmp_path / "in"), str(tmp_path / "gone"), "-o",
                 str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "Protecting 1 photo(s) in 1 album(s) on CPU (test); 1 input(s) cannot be used" in out
    assert main(["protect", str(tmp_path / "gone"), "-o", str(tmp_path / "out2")]) == 1
    assert "Protecting 0 photo(s) in 0 album(s)" in capsys.readouterr().out


def test_resume_with_settings_options_is_refused_instead_of_ignoring_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["protect", "--resume", str(out), "--preset", "high", "--eps", "6"]) == 2
    err = capsys.readouterr().err
    assert "--preset, --eps would be ignored" in err and "name them" in err
    # Settings options added later are guarded too, named by their current flags.
    assert main(["protect", "--resume", str(out), "--eps-ft", "5", "--iter2", "9",
                 "--epochs", "3"]) == 2
    assert "--eps-ft, --epochs, --iter2 would be ignored" in capsys.readouterr().err
    # Options a resume does take (where to run) are still fine: it goes on to "nothing to
    # resume" here.
    assert main(["protect", "--resume", str(out), "--device", "cpu"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
