"""``dladiff protect`` facing faults: odd file names, bad output folders, interrupts, resumes
with options. Each test reproduces one defect found by a fault probe."""

from __future__ import annotations

import io
import json
from pathlib import Path

from dladiff_app.cli.protect_cmd import Printer
from dladiff_app.core.events import JobFinished, PhotoFailed


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
