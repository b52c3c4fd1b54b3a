"""``dladiff score`` end to end: real photo files, real ONNX models (tiny) and the real dlib stack."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dladiff_app.cli.main import build_parser
from tests.engine import real_photos


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The default model store reads the user's settings: give the test an empty config/cache.
    monkeypatch.setenv("DLADIFF_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("DLADIFF_CACHE_DIR", str(tmp_path / "cache"))


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


def test_same_photo_scores_one(tmp_path: Path, tiny_scrfd_onnx: Path, tiny_arcface_onnx: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "copy.png"
    Image.open(real_photos.t1_path()).save(copy)
    code = _run(["--json", "score", str(real_photos.t1_path()), str(copy), "--encoder",
                 str(tiny_arcface_onnx), "--detector", str(tiny_scrfd_onnx)])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    (row,) = out["scores"]
    assert row["encoder"] == "rec_tiny" and row["metric"] == "cosine"
    assert row["value"] == pytest.approx(1.0, abs=1e-3) and row["verdict"] == "same person"


def test_table_and_missing_face(tmp_path: Path, tiny_scrfd_onnx: Path, tiny_arcface_onnx: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    blank = tmp_path / "blank.png"
    Image.fromarray(np.zeros((200, 300, 3), np.uint8)).save(blank)
    code = _run(["score", str(real_photos.t1_path()), str(blank), "--encoder", str(tiny_arcface_onnx),
                 "--detector", str(tiny_scrfd_onnx)])
    out = capsys.readouterr().out
    assert code == 1
    assert "encoder" in out and "threshold" in out and "no face found in blank.png" in out


def test_bad_input_exits_2(tmp_path: Path, tiny_arcface_onnx: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    code = _run(["score", str(tmp_path / "nope.jpg"), str(real_photos.t1_path()),
                 "--encoder", str(tiny_arcface_onnx)])
    assert code == 2 and "nope.jpg" in capsys.readouterr().err
    code = _run(["score", str(real_photos.t1_path()), str(real_photos.t1_path()), "--encoder", "no_such_encoder"])
    assert code == 2 and "no_such_encoder" in capsys.readouterr().err


def _crop_faces(tmp_path: Path) -> tuple[Path, Path]:
    """Two single-person crops of different people in t1.jpg, found by the real dlib detector."""
    from dladiff_app.engine.faces.dlib_detect import DlibDetector

    img = Image.open(real_photos.t1_path()).convert("RGB")
    faces = DlibDetector().detect(np.asarray(img, dtype=np.float32) / 255.0)
    assert len(faces) >= 2
    paths = []
    for i, face in enumerate(faces[:2]):
        x0, y0, x1, y1 = face.box
        pad = 0.6 * (x1 - x0)
        box = (int(max(0, x0 - pad)), int(max(0, y0 - pad)), int(x1 + pad), int(y1 + pad))
        path = tmp_path / f"person{i}.png"
        img.crop(box).save(path)
        paths.append(path)
    return paths[0], paths[1]


@pytest.mark.real_weights
def test_dlib_verdicts_on_real_photos(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _crop_faces(tmp_path)
    assert _run(["--json", "score", str(a), str(b), "--encoder", "dlib"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["scores"]
    assert row["metric"] == "euclidean" and row["verdict"] == "different person", row

    jpeg = tmp_path / "q75.jpg"
    Image.open(a).save(jpeg, quality=75)
    assert _run(["--json", "score", str(a), str(jpeg), "--encoder", "dlib"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["scores"]
    assert row["verdict"] == "same person", row
