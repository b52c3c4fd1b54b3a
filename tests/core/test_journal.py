"""The crash-safe journal: states, torn lines, job round trip, consistency check."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from dladiff_app.core.errors import OutputError
from dladiff_app.core.jobs import AlbumMode, ExportOptions, OutputFormat, ProtectJob
from dladiff_app.core.journal import JOURNAL_NAME, Journal, job_from_dict, job_to_dict
from dladiff_app.core.presets import Layers, preset


def _job(tmp_path: Path) -> ProtectJob:
    return ProtectJob(inputs=(tmp_path / "in",), output_dir=tmp_path / "out",
                      settings=preset("low").with_overrides(eps=6.0, layers=Layers.ZEROSHOT),
                      export=ExportOptions(format=OutputFormat.JPEG, quality=80,
                                           keep_metadata=True),
                      recursive=True, album_mode=AlbumMode.SINGLE)


def test_job_round_trip(tmp_path: Path) -> None:
    job = _job(tmp_path)
    back = job_from_dict(job_to_dict(job))
    assert back.settings == job.settings and back.export == job.export
    assert back.album_mode is AlbumMode.SINGLE and back.recursive and back.resume


def test_states_survive_reopen_and_torn_last_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    j = Journal(out)
    assert not j.exists
    j.start_job(_job(tmp_path))
    j.set_state("k1", "queued", album="a", source="/s/1.jpg")
    j.set_state("k1", "running", album="a", source="/s/1.jpg")
    data = b"pixels"
    (out / "a").mkdir()
    target = out / "a" / "1-protected.png"
    target.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    j.set_state("k1", "writing", album="a", source="/s/1.jpg", planned=str(target), sha256=sha)
    j.set_state("k1", "done", album="a", source="/s/1.jpg", output=str(target), sha256=sha,
                result={"x": 1})
    j.set_state("k2", "running", album="a", source="/s/2.jpg")
    # A crash in the middle of a write leaves a torn line without a newline.
    with open(out / JOURNAL_NAME, "ab") as fh:
        fh.write(b'{"kind":"photo","key":"k2","sta')
    again = Journal(out)
    assert again.torn_lines == 1
    assert again.job is not None and again.job["settings"]["eps"] == 6.0
    e1, e2 = again.entry("k1"), again.entry("k2")
    assert e1 is not None and e1.state == "done" and e1.output == str(target)
    assert e1.result == {"x": 1} and e1.done_count == 1
    assert e2 is not None and e2.state == "running" and e2.attempts == 1
    # The next record starts on its own line, so the torn fragment never merges with it.
    again.set_state("k2", "failed", album="a", source="/s/2.jpg", reason="2.jpg: broken")
    third = Journal(out)
    assert third.torn_lines == 1 and third.entry("k2").state == "failed"  # type: ignore[union-attr]
    assert [e.key for e in third.failed_in_album("a")] == ["k2"]
    assert third.problems() == []
    target.write_bytes(b"changed")
    assert "does not match its hash" in third.problems()[0]


def test_unknown_state_and_unwritable_folder(tmp_path: Path) -> None:
    j = Journal(tmp_path / "o")
    with pytest.raises(ValueError):
        j.set_state("k", "bogus", album="a", source="s")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="journal cannot be written"):
        Journal(blocker / "sub").set_state("k", "queued", album="a", source="s")


def test_names_that_are_not_utf8_round_trip_byte_for_byte(tmp_path: Path) -> None:
    source = "/photos/caf\udce9 \u00e9t\u00e9.jpg"  # an undecodable byte beside real Unicode
    j = Journal(tmp_path / "o")
    j.set_state("k", "failed", album="a", source=source, reason=f"{source}: broken")
    text = (tmp_path / "o" / JOURNAL_NAME).read_bytes().decode("utf-8")
    assert "\u00e9t\u00e9" in text  # readable names stay readable
    back = Journal(tmp_path / "o").entry("k")
    assert back is not None and back.source == source and back.reason == f"{source}: broken"
