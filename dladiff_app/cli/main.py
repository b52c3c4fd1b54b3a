"""``dladiff``: the headless command line over the same engine the desktop app uses.

Each subcommand lives in its own module exposing ``register(subparsers)``; that function adds an
argparse parser with ``set_defaults(func=run)`` where ``run(args) -> int`` is the exit code
(0 success, 1 some work failed, 2 usage error). Heavy libraries load inside ``run`` only, so
``dladiff --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from dladiff_app import __version__

# The planned commands, in the order --help lists them.
COMMAND_MODULES = (
    "dladiff_app.cli.protect_cmd",  # protect photos / albums
    "dladiff_app.cli.score_cmd",    # identity similarity between two photos
    "dladiff_app.cli.models_cmd",   # list / download / verify / point to models
    "dladiff_app.cli.doctor_cmd",   # device, versions, models, cache location
)


def available_command_modules() -> list[str]:
    return [m for m in COMMAND_MODULES if importlib.util.find_spec(m) is not None]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dladiff",
        description="Protect face photos from AI identity copying (DLADiff). "
        "Runs locally; nothing is sent anywhere.",
    )
    parser.add_argument("--version", action="version", version=f"dladiff {__version__}")
    parser.add_argument("--json", action="store_true",
                        help="machine-readable output (JSON; JSON lines for progress)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in available_command_modules():
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from dladiff_app.core.paths import configure_ml_environment, models_dir
    from dladiff_app.core.settings import load_settings

    # Model locations must be in the environment before any ML library is imported.
    configure_ml_environment(models_dir(load_settings()))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 for --help
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
