"""The model store: where each model is on disk, how it gets there, and whether it is intact.

Layout under ``root`` (``<cache>/models``): ``<id>/`` holds a downloaded model with the files of
its spec at their relative paths and a ``.dladiff-complete`` marker (JSON: source, revision and
each file's size and SHA-256, measured after download). ``.downloads/`` holds zip packs while
they download. A model can instead point to a local copy the user chose (settings
``model_paths``) or come from an installed Python package (the dlib pack).

``path()`` and ``status()`` never touch the network. ``download()`` refuses to in offline mode
(``offline=True`` or ``HF_HUB_OFFLINE``/``DLADIFF_OFFLINE`` set).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import ModelIntegrityError, ModelMissingError
from dladiff_app.core.hashing import sha256_file
from dladiff_app.engine.models import dlib_pack
from dladiff_app.engine.models.download import download_file, download_hub_files
from dladiff_app.engine.models.extract import safe_extract_zip
from dladiff_app.engine.models.registry import REGISTRY, ModelSpec, format_size, get_spec

Source = Literal["download", "local", "package", "missing"]
ProgressFn = Callable[[int, "int | None"], None]

MARKER = ".dladiff-complete"
_TRUTHY = {"1", "true", "yes", "on"}
# Zip packs: the largest insightface member (glintr100.onnx) is ~250 MB.
MAX_MEMBER_BYTES = 1 << 30
MAX_PACK_BYTES = 2 << 30


@dataclass(frozen=True)
class ModelStatus:
    id: str
    present: bool
    path: Path | None
    size_bytes: int | None
    source: Source
    detail: str


def package_folder(spec: ModelSpec) -> Path:
    """Where an installed Python package keeps the files of ``spec`` (kind python_package),
    located without importing the package; raises ``ModelMissingError`` saying how to install."""
    if spec.id == "dlib_offline":
        return dlib_pack.find_dlib_pack().folder
    import importlib.util

    try:
        found = importlib.util.find_spec(spec.source)
    except (ImportError, ValueError):
        found = None
    sub = spec.extra.get("package_folder", "")
    for location in list(found.submodule_search_locations or []) if found else []:
        folder = Path(location) / sub
        if all((folder / name).is_file() for name in spec.files):
            return folder
    raise ModelMissingError(
        f"{spec.title} ({spec.size_text()}) is not installed: run `{pip_command(spec)}`.")


def package_file(model_id: str) -> Path:
    """The one model file of python_package model ``model_id`` inside its installed package
    (SFace's, EdgeFace's, FaceNet's); raises ``ModelMissingError`` saying how to install."""
    spec = get_spec(model_id)
    (file_name,) = spec.files
    return package_folder(spec) / file_name


def pip_command(spec: ModelSpec) -> str:
    """How to install a python_package model: its distribution name (which may differ from the
    import name in ``source``), the version pinned, and any extra pip arguments."""
    name = spec.extra.get("pip_name", spec.source)
    args = spec.extra.get("pip_args", "")
    pinned = f"{name}=={spec.revision}" if spec.revision else name
    return f"pip install {args + ' ' if args else ''}{pinned}"


def env_offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in _TRUTHY
               for name in ("HF_HUB_OFFLINE", "DLADIFF_OFFLINE"))


def _folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts)


class ModelStore:
    def __init__(self, root: Path, settings_paths: Mapping[str, str] | None = None,
                 offline: bool | None = None,
                 registry: Mapping[str, ModelSpec] | None = None,
                 prefer_fp16: bool = False) -> None:
        self.root = Path(root)
        self.local_paths: dict[str, str] = dict(settings_paths or {})
        self._offline = offline
        self.registry: Mapping[str, ModelSpec] = REGISTRY if registry is None else registry
        self.prefer_fp16 = prefer_fp16

    @property
    def offline(self) -> bool:
        return env_offline() if self._offline is None else self._offline

    def spec(self, model_id: str) -> ModelSpec:
        return get_spec(model_id, self.registry)

    def model_dir(self, model_id: str) -> Path:
        return self.root / model_id

    def ids(self) -> list[str]:
        return list(self.registry)

    # ------------------------------------------------------------------ where is it

    def _marker(self, model_id: str) -> dict[str, object] | None:
        try:
            data = json.loads((self.model_dir(model_id) / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def status(self, model_id: str) -> ModelStatus:
        spec = self.spec(model_id)
        local = self.local_paths.get(model_id)
        if local:
            path = Path(local).expanduser()
            problems = validate_local(spec, path)
            if problems:
                return ModelStatus(model_id, False, path, None, "missing",
                                   f"local copy unusable: {'; '.join(problems)}")
            return ModelStatus(model_id, True, path, _folder_size(path), "local",
                               f"local copy at {path}")
        if spec.kind == "python_package":
            try:
                installed = package_folder(spec)
            except ModelMissingError:  # the error built from this status says how to install
                return ModelStatus(model_id, False, None, spec.size_bytes, "missing",
                                   "not installed")
            # The distribution's name (what pip installs), which may differ from the import's.
            package = spec.extra.get("pip_name", spec.source)
            return ModelStatus(model_id, True, installed, spec.size_bytes, "package",
                               f"installed Python package {package}")
        folder = self.model_dir(model_id)
        marker = self._marker(model_id)
        if marker is not None:
            files = marker.get("files")
            names = list(files) if isinstance(files, dict) else []
            if names and all((folder / name).is_file() for name in names):
                return ModelStatus(model_id, True, folder, _folder_size(folder), "download",
                                   f"downloaded to {folder}")
            return ModelStatus(model_id, False, folder, None, "missing",
                               "download incomplete or files removed: download it again")
        return ModelStatus(model_id, False, None, spec.size_bytes, "missing",
                           "not downloaded")

    def missing_error(self, model_id: str, detail: str = "") -> ModelMissingError:
        spec = self.spec(model_id)
        how = (f"Download it with `dladiff models download {model_id}` or the Models... button, "
               f"or point to a local copy with `dladiff models path {model_id} PATH`")
        if spec.kind == "python_package":
            how = f"Install it with `{pip_command(spec)}`"
        reason = f" ({detail})" if detail else ""
        return ModelMissingError(
            f"{spec.title} ({spec.size_text()}) is not available{reason}. {how}."
        )

    def path(self, model_id: str) -> Path:
        """The folder (or single file) of an available model; raises ModelMissingError."""
        status = self.status(model_id)
        if not status.present or status.path is None:
            raise self.missing_error(model_id, status.detail)
        sub = self.spec(model_id).extra.get("subfolder")
        if sub and (status.path / sub).is_dir():
            return status.path / sub  # a downloaded repo: the weights live in its subfolder
        return status.path

    # ------------------------------------------------------------------ get it

    def download(self, model_id: str, progress: ProgressFn | None = None,
                 cancel: CancelToken | None = None, accept_license: bool = False) -> Path:
        """Fetch a model into the store and return its folder.

        ``accept_license`` must be True (the caller showed ``spec.license_text`` and the user
        agreed). Already-present models return at once without touching the network.
        """
        spec = self.spec(model_id)
        status = self.status(model_id)
        if status.present and status.path is not None:
            return status.path
        if spec.kind == "python_package":
            raise self.missing_error(model_id, status.detail)
        if self.offline:
            raise self.missing_error(model_id, "offline mode is on, so it cannot be downloaded")
        if spec.needs_license_acceptance and not accept_license:
            raise ModelMissingError(
                f"{spec.title} needs its license accepted before download: {spec.license_name}. "
                f"{spec.license_text} ({spec.license_url})"
            )
        folder = self.model_dir(model_id)
        if spec.kind == "zip_pack":
            self._download_zip(spec, folder, progress, cancel)
        elif spec.kind == "url_file":
            (name,) = spec.files
            download_file(spec.source, folder / name, sha256=(spec.sha256 or {}).get(name),
                          expected_size=spec.size_bytes if spec.size_exact else None,
                          progress=progress, cancel=cancel)
            self._write_marker(spec, folder, spec.files)
        else:
            files = self._hub_files(spec)
            size = spec.fp16_size_bytes if files is spec.fp16_files else spec.size_bytes
            download_hub_files(spec.source, files, folder, revision=spec.revision,
                               total_bytes=size, progress=progress, cancel=cancel)
            self._write_marker(spec, folder, files)
        return folder

    def _hub_files(self, spec: ModelSpec) -> tuple[str, ...]:
        return spec.fp16_files if (self.prefer_fp16 and spec.fp16_files) else spec.files

    def _download_zip(self, spec: ModelSpec, folder: Path, progress: ProgressFn | None,
                      cancel: CancelToken | None) -> None:
        archive = self.root / ".downloads" / (spec.archive_name or f"{spec.id}.zip")
        expected = (spec.sha256 or {}).get(archive.name)
        download_file(spec.source, archive, sha256=expected,
                      expected_size=spec.size_bytes if spec.size_exact else None,
                      progress=progress, cancel=cancel)
        safe_extract_zip(archive, folder, max_member_bytes=MAX_MEMBER_BYTES,
                         max_total_bytes=MAX_PACK_BYTES)
        missing = [name for name in spec.files if not (folder / name).is_file()]
        if missing:
            shutil.rmtree(folder, ignore_errors=True)
            raise ModelIntegrityError(
                f"{archive.name} does not contain {', '.join(missing)}; the pack was removed. "
                "The download source may have changed."
            )
        self._write_marker(spec, folder, spec.files)
        for leftover in archive.parent.glob(archive.name + "*"):
            leftover.unlink(missing_ok=True)

    def _write_marker(self, spec: ModelSpec, folder: Path, files: tuple[str, ...]) -> None:
        records = {}
        for name in files:
            path = folder / name
            digest = sha256_file(path)
            fixed = (spec.sha256 or {}).get(name)
            if fixed is not None and digest != fixed:
                path.unlink(missing_ok=True)
                raise ModelIntegrityError(
                    f"{spec.title}: {name} has SHA-256 {digest}, expected {fixed}; the file was "
                    "deleted. Download it again."
                )
            records[name] = {"size": path.stat().st_size, "sha256": digest}
        marker = {"id": spec.id, "source": spec.source, "revision": spec.revision,
                  "files": records, "completed": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (folder / MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")

    def use_local(self, model_id: str, path: Path | str) -> Path:
        """Point ``model_id`` at a local copy after checking it looks right; the caller saves
        ``self.local_paths`` into the settings. Raises ModelIntegrityError naming the problem."""
        spec = self.spec(model_id)
        resolved = Path(path).expanduser().resolve()
        problems = validate_local(spec, resolved)
        if problems:
            raise ModelIntegrityError(
                f"{resolved} cannot be used as {spec.title}: {'; '.join(problems)}."
            )
        self.local_paths[model_id] = str(resolved)
        return resolved

    def forget_local(self, model_id: str) -> None:
        self.local_paths.pop(model_id, None)

    # ------------------------------------------------------------------ is it intact

    def verify(self, model_id: str) -> list[str]:
        """Problems found with an installed model (empty list: it is fine)."""
        spec = self.spec(model_id)
        status = self.status(model_id)
        if not status.present or status.path is None:
            return [f"{spec.title}: {status.detail}"]
        if status.source == "local":
            return validate_local(spec, status.path)
        problems: list[str] = []
        if status.source == "package":
            for name in spec.files:
                fixed = (spec.sha256 or {}).get(name)
                if fixed is not None and sha256_file(status.path / name) != fixed:
                    problems.append(f"{name}: SHA-256 differs from {spec.source} {spec.revision}")
            return problems
        marker = self._marker(model_id) or {}
        files = marker.get("files")
        for name, record in (files.items() if isinstance(files, dict) else []):
            path = status.path / name
            if not path.is_file():
                problems.append(f"{name}: missing")
            elif path.stat().st_size != record.get("size"):
                problems.append(f"{name}: size changed since download")
            elif sha256_file(path) != record.get("sha256"):
                problems.append(f"{name}: content changed since download (SHA-256 differs)")
        return problems


def validate_local(spec: ModelSpec, path: Path) -> list[str]:
    """Why ``path`` cannot serve as ``spec`` (empty: it looks right). Checks layout only."""
    if not path.exists():
        return [f"{path} does not exist"]
    if spec.id == "sd15":
        if path.is_file():
            if path.suffix.lower() != ".safetensors":
                return [f"{path.name} is not a .safetensors checkpoint (other formats can run "
                        "code when loaded, so they are refused)"]
            return []
        if not (path / "model_index.json").is_file():
            return [f"{path} has no model_index.json (not a diffusers folder)"]
        missing = [sub for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
                   if not (path / sub).is_dir()]
        return [f"missing subfolder {sub}/" for sub in missing]
    if path.is_file():
        return [f"{path.name} is a file; {spec.title} needs a folder"]
    if spec.kind == "hf_files" and spec.extra.get("subfolder"):
        sub = spec.extra["subfolder"]
        names = [name[len(sub) + 1:] if name.startswith(sub + "/") else name
                 for name in spec.files]
        # Accept either the repo layout or the subfolder itself.
        if all((path / name).is_file() for name in spec.files):
            return []
        return [f"missing {name}" for name in names if not (path / name).is_file()]
    return [f"missing {name}" for name in spec.files if not (path / name).is_file()]


def describe_size(status: ModelStatus, spec: ModelSpec) -> str:
    if status.source in ("download", "local", "package") and status.size_bytes is not None:
        return format_size(status.size_bytes)
    return spec.size_text()
