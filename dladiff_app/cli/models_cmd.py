"""``dladiff models``: list, download, verify and point to local copies of the models."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import DladiffError
from dladiff_app.core.paths import models_dir, settings_path
from dladiff_app.core.settings import Settings, load_settings, save_settings
from dladiff_app.engine.models.registry import format_size
from dladiff_app.engine.models.store import ModelStatus, ModelStore, describe_size


def open_store(settings: Settings | None = None, *, prefer_fp16: bool = False) -> ModelStore:
    settings = settings if settings is not None else load_settings()
    return ModelStore(models_dir(settings), settings.model_paths, prefer_fp16=prefer_fp16)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("models", help="list, download, verify or locate models",
                                   description="Manage the models DLADiff uses.")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    p_list = sub.add_parser("list", help="show each model's status, size, license and path")
    p_list.set_defaults(func=run_list)

    p_dl = sub.add_parser("download", help="download models (shows the license first)")
    p_dl.add_argument("names", nargs="+", metavar="NAME", help="model id, or 'all'")
    p_dl.add_argument("--yes", action="store_true", help="accept the licenses without asking")
    p_dl.set_defaults(func=run_download)

    p_verify = sub.add_parser("verify", help="check installed models for missing/changed files")
    p_verify.add_argument("names", nargs="*", metavar="NAME", help="model ids (default: all)")
    p_verify.set_defaults(func=run_verify)

    p_path = sub.add_parser("path", help="use a local copy of a model instead of downloading")
    p_path.add_argument("name", metavar="NAME")
    p_path.add_argument("path", metavar="PATH", help="folder or file; '-' forgets the local copy")
    p_path.set_defaults(func=run_path)


def run(args: argparse.Namespace) -> int:
    return int(args.func(args))


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _row(store: ModelStore, status: ModelStatus) -> dict[str, Any]:
    spec = store.spec(status.id)
    return {
        "id": spec.id, "title": spec.title, "purpose": spec.purpose,
        "present": status.present, "source": status.source,
        "size_bytes": status.size_bytes, "size": describe_size(status, spec),
        "license": spec.license_name, "license_url": spec.license_url,
        "path": str(status.path) if status.path else None, "detail": status.detail,
        "required_for": list(spec.required_for),
    }


def run_list(args: argparse.Namespace) -> int:
    store = open_store()
    rows = [_row(store, store.status(model_id)) for model_id in store.ids()]
    if getattr(args, "json", False):
        print(json.dumps({"models_dir": str(store.root), "models": rows}, indent=2))
        return 0
    print(f"Models folder: {store.root}")
    for row in rows:
        state = "ready" if row["present"] else "MISSING"
        print(f"\n{row['id']:<18} {state:<8} {row['size']:<10} {row['title']}")
        print(f"  for:     {row['purpose']}")
        print(f"  license: {row['license']}")
        print(f"  where:   {row['path'] or '-'} ({row['detail']})")
    missing = [row["id"] for row in rows if not row["present"]]
    if missing:
        print(f"\nMissing: {', '.join(missing)}. Fetch with `dladiff models download NAME` or "
              "point to a local copy with `dladiff models path NAME PATH`.")
    return 0


class ProgressPrinter:
    """A text bar on a terminal, plain percentage lines (every 10%) otherwise."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_decile = -1
        self._last_draw = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw < 0.1 and (total is None or done < total):
                return
            self._last_draw = now
            if total:
                fraction = min(done / total, 1.0)
                bar = "#" * int(fraction * 30)
                text = f"\r{self.label} [{bar:<30}] {fraction:5.1%} {format_size(done)}"
            else:
                text = f"\r{self.label} {format_size(done)}"
            self.stream.write(text)
            self.stream.flush()
            return
        if total:
            decile = int(min(done / total, 1.0) * 10)
            if decile > self._last_decile:
                self._last_decile = decile
                print(f"{self.label}: {decile * 10}% ({format_size(done)} of "
                      f"{format_size(total)})", file=self.stream, flush=True)

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _confirm(prompt: str, ask: Callable[[str], str] = input) -> bool:
    if not sys.stdin or not sys.stdin.isatty():
        return False
    try:
        return ask(prompt).strip().lower() in {"y", "yes"}
    except EOFError:
        return False


def run_download(args: argparse.Namespace) -> int:
    names: list[str] = list(args.names)
    settings = load_settings()
    if names == ["all"]:
        names = list(open_store(settings).ids())
    prefer_fp16 = False
    if "sd15" in names:
        from dladiff_app.engine.device import download_fp16_weights

        prefer_fp16 = download_fp16_weights(settings.device)
    store = open_store(settings, prefer_fp16=prefer_fp16)
    unknown = [name for name in names if name not in store.registry]
    if unknown:
        return _error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(store.ids())}")
    failures = 0
    results: list[dict[str, Any]] = []
    for name in names:
        spec = store.spec(name)
        status = store.status(name)
        if status.present:
            print(f"{name}: already available at {status.path}", file=sys.stderr)
            results.append({"id": name, "ok": True, "path": str(status.path)})
            continue
        if spec.needs_license_acceptance and not args.yes:
            print(f"\n{spec.title} ({spec.size_text()})\nLicense: {spec.license_name}\n"
                  f"{spec.license_text}\n{spec.license_url}", file=sys.stderr)
            if not _confirm("Accept this license and download? [y/N] "):
                print(f"{name}: skipped (license not accepted; pass --yes to accept)",
                      file=sys.stderr)
                failures += 1
                results.append({"id": name, "ok": False, "error": "license not accepted"})
                continue
        printer = ProgressPrinter(name)
        try:
            path = store.download(name, progress=printer, cancel=CancelToken(),
                                  accept_license=True)
        except DladiffError as exc:
            printer.finish()
            print(f"{name}: {exc}", file=sys.stderr)
            failures += 1
            results.append({"id": name, "ok": False, "error": str(exc)})
            continue
        printer.finish()
        print(f"{name}: ready at {path}", file=sys.stderr)
        results.append({"id": name, "ok": True, "path": str(path)})
    if getattr(args, "json", False):
        print(json.dumps({"results": results}, indent=2))
    return 1 if failures else 0


def run_verify(args: argparse.Namespace) -> int:
    store = open_store()
    names = list(args.names) or [m for m in store.ids() if store.status(m).present]
    report: dict[str, list[str]] = {}
    for name in names:
        if name not in store.registry:
            return _error(f"unknown model {name}; known: {', '.join(store.ids())}")
        report[name] = store.verify(name)
    if getattr(args, "json", False):
        print(json.dumps({"problems": report}, indent=2))
    else:
        if not names:
            print("No models installed yet: nothing to verify.")
        for name, problems in report.items():
            print(f"{name}: {'ok' if not problems else 'PROBLEMS'}")
            for problem in problems:
                print(f"  - {problem}")
    return 1 if any(report.values()) else 0


def run_path(args: argparse.Namespace) -> int:
    settings = load_settings()
    store = open_store(settings)
    if args.name not in store.registry:
        return _error(f"unknown model {args.name}; known: {', '.join(store.ids())}")
    try:
        if args.path == "-":
            store.forget_local(args.name)
            message = f"{args.name}: local copy forgotten"
        else:
            resolved = store.use_local(args.name, args.path)
            message = f"{args.name}: using {resolved}"
    except DladiffError as exc:
        return _error(str(exc))
    settings.model_paths = dict(store.local_paths)
    save_settings(settings)
    if getattr(args, "json", False):
        print(json.dumps({"id": args.name, "model_paths": settings.model_paths,
                          "settings": str(settings_path())}))
    else:
        print(message)
    return 0
