"""Input discovery and album grouping on real folders."""

from __future__ import annotations

from pathlib import Path

from dladiff_app.core.albums import discover_inputs, group_albums
from dladiff_app.core.jobs import AlbumMode


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folder_takes_pictures_only_and_reports_others(tmp_path: Path) -> None:
    a = _touch(tmp_path / "anna" / "b.jpg")
    b = _touch(tmp_path / "anna" / "A.PNG")
    gif = _touch(tmp_path / "anna" / "c.gif")
    notes = _touch(tmp_path / "anna" / "notes.txt")
    _touch(tmp_path / "anna" / ".hidden.jpg")
    _touch(tmp_path / "anna" / "sub" / "deep.jpg")
    found = discover_inputs([tmp_path / "anna"])
    assert [f.path for f in found.files] == sorted([a, b, gif])
    assert found.ignored == (notes,)
    deep = discover_inputs([tmp_path / "anna"], recursive=True)
    assert tmp_path / "anna" / "sub" / "deep.jpg" in [f.path for f in deep.files]


def test_explicit_files_missing_and_duplicates(tmp_path: Path) -> None:
    txt = _touch(tmp_path / "x" / "letter.txt")
    jpg = _touch(tmp_path / "x" / "p.jpg")
    found = discover_inputs([txt, jpg, tmp_path / "x", tmp_path / "nope.jpg"])
    assert [f.path for f in found.files] == [txt, jpg]  # named files always taken, once
    assert found.missing == (tmp_path / "nope.jpg",)


def test_output_folder_inside_input_is_excluded(tmp_path: Path) -> None:
    _touch(tmp_path / "in" / "p.jpg")
    _touch(tmp_path / "in" / "out" / "p-protected.png")
    found = discover_inputs([tmp_path / "in"], recursive=True, exclude=tmp_path / "in" / "out")
    assert [f.path.name for f in found.files] == ["p.jpg"]


def test_input_folder_inside_the_output_folder_is_reported_not_silently_empty(
        tmp_path: Path) -> None:
    _touch(tmp_path / "pics" / "me" / "p.jpg")
    for out in (tmp_path / "pics", tmp_path / "pics" / "me"):
        found = discover_inputs([tmp_path / "pics" / "me"], exclude=out)
        assert found.files == () and found.inside_output == (tmp_path / "pics" / "me",)


def test_grouping_modes_and_unique_names(tmp_path: Path) -> None:
    files = [_touch(tmp_path / "one" / "anna" / "1.jpg"), _touch(tmp_path / "one" / "anna" / "2.jpg"),
             _touch(tmp_path / "two" / "Anna" / "1.jpg"), _touch(tmp_path / "two" / "bo" / "3.jpg")]
    found = discover_inputs([tmp_path / "one" / "anna", tmp_path / "two" / "Anna",
                             tmp_path / "two" / "bo"])
    albums = group_albums(found.files)
    assert [(a.name, len(a.photos)) for a in albums] == [("anna", 2), ("Anna-2", 1), ("bo", 1)]
    assert albums[0].output_dir(tmp_path / "o") == tmp_path / "o" / "anna"
    single = group_albums(found.files, AlbumMode.SINGLE)
    assert len(single) == 1 and len(single[0].photos) == 4
    per = group_albums(found.files, AlbumMode.PER_PHOTO)
    assert [a.name for a in per] == ["1", "2", "1-2", "3"]
    assert group_albums([], AlbumMode.SINGLE) == []
    assert files[0] in albums[0].photos
