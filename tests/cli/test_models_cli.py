"""`dladiff models ...` and `dladiff doctor` on a fresh machine and against a local server."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from dladiff_app.cli.main import main
from dladiff_app.core.settings import load_settings
from dladiff_app.engine.models import registry
from tests.fixtures.http_server import serve_files


@pytest.fixture(autouse=True)
def fresh_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty cache and config folders; the ML variables main() sets are restored afterwards."""
    monkeypatch.setenv("DLADIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DLADIFF_CONFIG_DIR", str(tmp_path / "config"))
    for name in ("HF_HOME", "HF_HUB_CACHE", "INSIGHTFACE_HOME", "TORCH_HOME",
                 "HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY"):
        monkeypatch.setenv(name, "unset-by-test")
    return tmp_path


def test_models_list_on_fresh_machine(capsys: pytest.CaptureFixture[str],
                                      fresh_machine: Path) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert str(fresh_machine / "cache" / "models") in out
    assert "sd15" in out and "MISSING" in out and "non-commercial" in out
    assert "dladiff models download NAME" in out
    assert main(["--json", "models", "list"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert set(rows) == set(registry.REGISTRY)
    assert rows["dlib_offline"]["present"] and rows["dlib_offline"]["source"] == "package"
    assert not rows["buffalo_l"]["present"]


def test_doctor_on_fresh_machine(capsys: pytest.CaptureFixture[str], fresh_machine: Path) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "Device:" in out and "Missing models:" in out and "torch" in out
    assert main(["--json", "doctor"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device"]["ok"] and report["device"]["kind"] in ("cpu", "cuda", "mps")
    assert report["models_dir"] == str(fresh_machine / "cache" / "models")
    assert report["libraries"]["diffusers"]


def test_download_refuses_offline_and_without_license(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["models", "download", "buffalo_l", "--yes"]) == 1
    assert "offline" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal: cannot ask
    assert main(["models", "download", "buffalo_l"]) == 1
    err = capsys.readouterr().err
    assert "non-commercial research" in err and "--yes" in err
    assert main(["models", "download", "nope"]) == 1


def test_download_verify_and_path(capsys: pytest.CaptureFixture[str], fresh_machine: Path,
                                  monkeypatch: pytest.MonkeyPatch,
                                  tiny_scrfd_onnx: Path, tiny_arcface_onnx: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.write(tiny_scrfd_onnx, "det_10g.onnx")
        zf.write(tiny_arcface_onnx, "w600k_r50.onnx")
    with serve_files({"/buffalo_l.zip": buffer.getvalue()}) as server:
        spec = dataclasses.replace(registry.REGISTRY["buffalo_l"],
                                   source=server.url("/buffalo_l.zip"))
        monkeypatch.setitem(registry.REGISTRY, "buffalo_l", spec)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        assert main(["models", "download", "buffalo_l", "--yes"]) == 0
    err = capsys.readouterr().err
    assert "buffalo_l: 100%" in err and "ready at" in err
    assert main(["models", "verify", "buffalo_l"]) == 0
    assert "buffalo_l: ok" in capsys.readouterr().out

    folder = fresh_machine / "cache" / "models" / "buffalo_l"
    (folder / "det_10g.onnx").write_bytes(b"tampered")
    assert main(["models", "verify"]) == 1
    assert "changed since download" in capsys.readouterr().out

    local = fresh_machine / "antelope"
    local.mkdir()
    assert main(["models", "path", "antelopev2", str(local)]) == 1
    assert "missing glintr100.onnx" in capsys.readouterr().err
    shutil.copy(tiny_scrfd_onnx, local / "scrfd_10g_bnkps.onnx")
    shutil.copy(tiny_arcface_onnx, local / "glintr100.onnx")
    assert main(["models", "path", "antelopev2", str(local)]) == 0
    assert "antelopev2: using" in capsys.readouterr().out
    assert load_settings().model_paths == {"antelopev2": str(local.resolve())}
    assert main(["--json", "models", "list"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert rows["antelopev2"]["source"] == "local" and rows["antelopev2"]["present"]
    assert main(["models", "path", "antelopev2", "-"]) == 0
    assert load_settings().model_paths == {}
