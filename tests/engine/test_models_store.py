"""The model store against a local HTTP server: zip packs, offline mode, local copies, verify."""

from __future__ import annotations

import dataclasses
import io
import shutil
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dladiff_app.core.errors import ModelIntegrityError, ModelMissingError
from dladiff_app.engine.models.registry import REGISTRY, ModelSpec
from dladiff_app.engine.models.store import ModelStore
from tests.fixtures.http_server import FileServer, serve_files


def _pack_bytes(folder: str | None = None) -> bytes:
    buffer = io.BytesIO()
    prefix = f"{folder}/" if folder else ""
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(prefix + "det_10g.onnx", b"detector bytes")
        zf.writestr(prefix + "w600k_r50.onnx", b"recognizer bytes")
    return buffer.getvalue()


@pytest.fixture()
def server() -> Iterator[FileServer]:
    with serve_files({"/buffalo_l.zip": _pack_bytes()}) as srv:
        yield srv


def _registry(server: FileServer) -> dict[str, ModelSpec]:
    table = dict(REGISTRY)
    table["buffalo_l"] = dataclasses.replace(REGISTRY["buffalo_l"],
                                             source=server.url("/buffalo_l.zip"))
    return table


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Fail any outgoing connection (socket guard) and record attempts."""
    attempts: list[object] = []

    def guard(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise AssertionError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", guard)
    monkeypatch.setattr(socket.socket, "connect_ex", guard)
    return attempts


def test_fresh_store_reports_missing_with_actionable_error(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", offline=True)
    status = store.status("buffalo_l")
    assert not status.present and status.source == "missing"
    with pytest.raises(ModelMissingError) as info:
        store.path("buffalo_l")
    text = str(info.value)
    assert "buffalo_l" in text and "~288.0 MB" in text
    assert "dladiff models download buffalo_l" in text
    assert "dladiff models path buffalo_l PATH" in text and "Models..." in text


def test_download_zip_pack_with_progress_and_verify(server: FileServer, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", offline=False, registry=_registry(server))
    events: list[tuple[int, int | None]] = []
    with pytest.raises(ModelMissingError, match="non-commercial"):
        store.download("buffalo_l")  # license not accepted: nothing fetched
    assert server.requests == []
    folder = store.download("buffalo_l", progress=lambda d, t: events.append((d, t)),
                            accept_license=True)
    assert (folder / "w600k_r50.onnx").read_bytes() == b"recognizer bytes"
    assert events and events[-1][0] == len(_pack_bytes())
    status = store.status("buffalo_l")
    assert status.present and status.source == "download" and status.path == folder
    assert store.verify("buffalo_l") == []
    assert not list((tmp_path / "models" / ".downloads").iterdir())  # zip removed

    (folder / "w600k_r50.onnx").write_bytes(b"recognizer bytez")
    assert store.verify("buffalo_l") == ["w600k_r50.onnx: content changed since download "
                                         "(SHA-256 differs)"]
    (folder / "det_10g.onnx").unlink()
    assert not store.status("buffalo_l").present


def test_pack_with_wrong_hash_is_deleted(server: FileServer, tmp_path: Path) -> None:
    table = _registry(server)
    table["buffalo_l"] = dataclasses.replace(table["buffalo_l"], sha256={"buffalo_l.zip": "ab" * 32})
    store = ModelStore(tmp_path / "models", offline=False, registry=table)
    with pytest.raises(ModelIntegrityError, match="SHA-256 mismatch"):
        store.download("buffalo_l", accept_license=True)
    assert not store.status("buffalo_l").present
    assert not any((tmp_path / "models").rglob("*.zip*"))


def test_pack_missing_expected_files_is_refused(server: FileServer, tmp_path: Path) -> None:
    server.files["/buffalo_l.zip"] = _pack_bytes().replace(b"w600k_r50", b"w600k_xxx")
    store = ModelStore(tmp_path / "models", offline=False, registry=_registry(server))
    with pytest.raises(ModelIntegrityError, match="does not contain w600k_r50.onnx"):
        store.download("buffalo_l", accept_license=True)
    assert not (tmp_path / "models" / "buffalo_l").exists()


def test_offline_makes_no_connection(server: FileServer, tmp_path: Path,
                                     no_network: list[object],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    store = ModelStore(tmp_path / "models", registry=_registry(server))
    assert store.offline
    for model_id in ("buffalo_l", "sd15", "clip_vit_h14"):
        with pytest.raises(ModelMissingError) as info:
            store.download(model_id, accept_license=True)
        assert "offline" in str(info.value)
        assert f"dladiff models path {model_id} PATH" in str(info.value)
    assert no_network == [] and server.requests == []


def test_offline_with_models_present_needs_no_network(server: FileServer, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store = ModelStore(tmp_path / "models", offline=False, registry=_registry(server))
    store.download("buffalo_l", accept_license=True)
    attempts: list[object] = []

    def guard(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise AssertionError("network")

    monkeypatch.setattr(socket.socket, "connect", guard)
    offline = ModelStore(tmp_path / "models", offline=True, registry=_registry(server))
    assert offline.download("buffalo_l") == tmp_path / "models" / "buffalo_l"
    assert offline.path("buffalo_l").is_dir()
    assert attempts == []


def test_use_local_validates(tmp_path: Path, tiny_scrfd_onnx: Path,
                             tiny_arcface_onnx: Path) -> None:
    store = ModelStore(tmp_path / "models", offline=True)
    pack = tmp_path / "my_pack"
    pack.mkdir()
    shutil.copy(tiny_scrfd_onnx, pack / "det_10g.onnx")
    with pytest.raises(ModelIntegrityError, match="missing w600k_r50.onnx"):
        store.use_local("buffalo_l", pack)
    shutil.copy(tiny_arcface_onnx, pack / "w600k_r50.onnx")
    assert store.use_local("buffalo_l", pack) == pack.resolve()
    assert store.local_paths == {"buffalo_l": str(pack.resolve())}
    status = store.status("buffalo_l")
    assert status.present and status.source == "local"
    assert store.verify("buffalo_l") == []


def test_use_local_sd_checks_format(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", offline=True)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"pickle")
    with pytest.raises(ModelIntegrityError, match="refused"):
        store.use_local("sd15", ckpt)
    with pytest.raises(ModelIntegrityError, match="model_index.json"):
        store.use_local("sd15", tmp_path)
    single = tmp_path / "v1-5.safetensors"
    single.write_bytes(b"{}")
    assert store.use_local("sd15", single) == single.resolve()


def test_dlib_pack_comes_from_package(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", offline=True)
    status = store.status("dlib_offline")
    assert status.present and status.source == "package"
    assert store.path("dlib_offline").joinpath("mmod_human_face_detector.dat").is_file()


def test_sface_comes_from_package_and_its_fp32_file_downloads(tmp_path: Path) -> None:
    from dladiff_app.engine.faces import registry as faces
    from dladiff_app.engine.faces.sface import FP32_FILE, INT8_FILE, package_model_path

    store = ModelStore(tmp_path / "models", offline=True)
    status = store.status("sface")
    assert status.present and status.source == "package"
    assert store.path("sface") / INT8_FILE == package_model_path()
    assert faces._sface_file(store) == (package_model_path(), True)
    # The fp32 original, downloaded on request (a real ONNX file, served locally), is then
    # preferred: it loads as the same encoder.
    body = package_model_path().read_bytes()
    with serve_files({"/sface.onnx": body}) as srv:
        table = dict(REGISTRY)
        table["sface_fp32"] = dataclasses.replace(REGISTRY["sface_fp32"],
                                                  source=srv.url("/sface.onnx"))
        online = ModelStore(tmp_path / "models", offline=False, registry=table)
        with pytest.raises(ModelMissingError, match="license"):
            online.download("sface_fp32")
        folder = online.download("sface_fp32", accept_license=True)
    assert (folder / FP32_FILE).read_bytes() == body
    assert online.verify("sface_fp32") == []
    path, packaged = faces._sface_file(online)
    assert path == folder / FP32_FILE and not packaged
    assert faces.load_encoder("sface", online).name == "sface"


def test_a_missing_model_package_is_named_once(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    spec = REGISTRY["edgeface"]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == spec.source else real(name, *a))
    store = ModelStore(tmp_path / "models", offline=True)
    assert store.status("edgeface").detail == "not installed"
    with pytest.raises(ModelMissingError) as info:
        store.path("edgeface")
    text = str(info.value)
    assert text.count(spec.title) == 1 and text.count("pip install") == 1, text
