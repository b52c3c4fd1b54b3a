"""``dladiff protect`` facing faults: odd file names, bad output folders, interrupts, resumes
with options. Each test reproduces one defect found by a fault probe."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from dladiff_app.cli.main import main
from dladiff_app.cli.protect_cmd import Printer
from dladiff_app.core.events import JobFinished, PhotoFailed
from tests.engine.light_kit import make_photos


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
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dladiff_app.core.journal import JOURNAL_NAME

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
