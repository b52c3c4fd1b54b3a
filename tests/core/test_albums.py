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
    # Folders of the same name are told apart by their parents, not by their position.
    assert [(a.name, len(a.photos)) for a in albums] == [("one-anna", 2), ("two-Anna", 1),
                                                         ("bo", 1)]
    assert albums[0].output_dir(tmp_path / "o") == tmp_path / "o" / "one-anna"
    single = group_albums(found.files, AlbumMode.SINGLE)
    assert len(single) == 1 and len(single[0].photos) == 4
    per = group_albums(found.files, AlbumMode.PER_PHOTO)
    assert [a.name for a in per] == ["1", "2", "1-2", "3"]
    assert group_albums([], AlbumMode.SINGLE) == []
    assert files[0] in albums[0].photos


def test_album_names_do_not_depend_on_what_else_is_protected(tmp_path: Path) -> None:
    later = _touch(tmp_path / "lib" / "2022" / "Camera" / "b.jpg")
    first = group_albums(discover_inputs([later.parent]).files)
    assert [a.name for a in first] == ["Camera"]
    earlier = _touch(tmp_path / "lib" / "2021" / "Camera" / "a.jpg")
    both = discover_inputs([tmp_path / "lib"], recursive=True).files
    # Without the job's memory the two folders get names of their own ...
    assert sorted(a.name for a in group_albums(both)) == ["2021-Camera", "2022-Camera"]
    # ... and with it (a resume) the first folder keeps the name it had.
    known = {a.origin: a.name for a in first}
    again = {a.origin: a.name for a in group_albums(both, known=known)}
    assert again == {str(later.parent.resolve()): "Camera",
                     str(earlier.parent.resolve()): "2021-Camera"}
    per_photo = group_albums(both, AlbumMode.PER_PHOTO, known={str(later.absolute()): "mine"})
    assert [a.name for a in per_photo] == ["a", "mine"]
