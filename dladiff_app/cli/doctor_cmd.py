"""``dladiff doctor``: device, library versions, model status and folders, in one report."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib import metadata
from typing import Any

from dladiff_app import __version__
from dladiff_app.core.errors import DladiffError
from dladiff_app.core.paths import cache_dir, models_dir, settings_path
from dladiff_app.core.settings import load_settings
from dladiff_app.engine.models.store import ModelStore, describe_size, env_offline

LIBRARIES = ("torch", "diffusers", "transformers", "peft", "huggingface_hub", "safetensors",
             "insightface", "onnxruntime", "onnx", "dlib-bin", "face_recognition_models",
             "numpy", "pillow", "PySide6-Essentials", "platformdirs")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("doctor", help="check device, libraries and models",
                                   description="Report the device, library versions, model "
                                               "status and folders DLADiff uses.")
    parser.set_defaults(func=run)


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _device(requested: str) -> dict[str, Any]:
    try:
        from dladiff_app.engine.device import resolve_device

        info = resolve_device(requested)
    except DladiffError as exc:
        return {"ok": False, "requested": requested, "error": str(exc)}
    except ImportError as exc:
        return {"ok": False, "requested": requested, "error": f"torch cannot be imported: {exc}"}
    return {"ok": True, "requested": requested, "kind": info.kind, "torch_device": info.torch_device,
            "name": info.name, "memory_bytes": info.memory_bytes,
            "precision": str(info.autocast_dtype or "float32").replace("torch.", ""),
            "reason": info.reason}


def collect() -> dict[str, Any]:
    settings = load_settings()
    store = ModelStore(models_dir(settings), settings.model_paths)
    models = []
    for model_id in store.ids():
        status = store.status(model_id)
        spec = store.spec(model_id)
        models.append({"id": model_id, "present": status.present, "source": status.source,
                       "size": describe_size(status, spec), "detail": status.detail,
                       "required_for": list(spec.required_for)})
    return {
        "dladiff": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": _device(settings.device),
        "libraries": _versions(),
        "cache_dir": str(cache_dir(settings)),
        "models_dir": str(store.root),
        "settings_file": str(settings_path()),
        "offline": env_offline(),
        "models": models,
    }


def run(args: argparse.Namespace) -> int:
    report = collect()
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2))
        return 0
    device = report["device"]
    print(f"DLADiff {report['dladiff']} on Python {report['python']} ({report['platform']})")
    if device["ok"]:
        memory = device["memory_bytes"]
        gib = f", {memory / 2**30:.1f} GiB" if memory else ""
        print(f"Device:   {device['name']} [{device['torch_device']}{gib}, "
              f"{device['precision']}]\n          {device['reason']}")
    else:
        print(f"Device:   problem: {device['error']}")
    print(f"Cache:    {report['cache_dir']}")
    print(f"Models:   {report['models_dir']}")
    print(f"Settings: {report['settings_file']}")
    print(f"Offline:  {'yes' if report['offline'] else 'no'}")
    print("Libraries:")
    for name, version in report["libraries"].items():
        print(f"  {name:<24} {version or 'NOT INSTALLED'}")
    print("Models:")
    for model in report["models"]:
        state = "ready" if model["present"] else "MISSING"
        print(f"  {model['id']:<18} {state:<8} {model['size']:<10} {model['detail']}")
    missing = [m["id"] for m in report["models"] if not m["present"]]
    if missing:
        print(f"Missing models: {', '.join(missing)}. Fetch with `dladiff models download NAME` "
              "or point to a local copy with `dladiff models path NAME PATH`.")
    return 0
