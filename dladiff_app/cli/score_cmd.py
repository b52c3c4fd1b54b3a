"""``dladiff score CLEAN OTHER``: identity similarity between the subject of two photos.

Exit codes: 0 scored, 1 a face is missing in either photo, 2 bad input (unreadable photo,
unknown or missing encoder).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dladiff_app.core.errors import DladiffError

EXIT_SCORED, EXIT_NO_FACE, EXIT_BAD_INPUT = 0, 1, 2


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "score",
        help="identity similarity between two photos (per identity encoder)",
        description="Compare the largest face of CLEAN with its counterpart in OTHER using every "
        "identity encoder available on this machine (or the ones named with --encoder) and say "
        "whether each would judge them the same person.",
    )
    p.add_argument("clean", help="the original photo")
    p.add_argument("other", help="the photo to compare (e.g. the protected one)")
    p.add_argument("--encoder", action="append", dest="encoders", metavar="NAME",
                   help="buffalo_l, antelopev2, clip_vit_h14, clip_vit_l14, dlib, or the path "
                   "of a 112x112 ONNX recognizer; repeat for several (default: all present)")
    p.add_argument("--detector", metavar="PATH",
                   help="an SCRFD ONNX face detector to use (default: buffalo_l's when present, "
                   "else the offline dlib detector)")
    p.add_argument("--all-faces", action="store_true",
                   help="score every face of CLEAN, not only the largest")
    # SUPPRESS: without it this option's default would overwrite the global --json flag.
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print JSON")
    p.set_defaults(func=run)


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("face", "encoder", "metric", "value", "threshold", "verdict")
    lines = [[str(r["face"]), r["encoder"], r["metric"],
              "-" if r["value"] is None else f"{r['value']:.4f}",
              f"{r['threshold']:g}", r["verdict"] + (f" ({r['note']})" if r["note"] else "")]
             for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*line) for line in lines])


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dladiff_app.core.imageio import load_image
    from dladiff_app.engine.faces.registry import available_detector, available_encoders
    from dladiff_app.engine.faces.score import score_images
    from dladiff_app.engine.faces.scrfd import ScrfdDetector

    as_json = bool(getattr(args, "json", False))
    try:
        clean = load_image(args.clean)
        other = load_image(args.other)
        encoders = available_encoders(names=args.encoders or None)
        detector = (ScrfdDetector(args.detector) if args.detector else available_detector())
        matches = score_images(
            clean.pixels, other.pixels, detector, encoders,
            match="all" if args.all_faces else "largest",
            labels=(Path(args.clean).name, Path(args.other).name),
        )
    except DladiffError as exc:  # ImageError included: unreadable photo, missing model, ...
        if as_json:
            print(json.dumps({"error": str(exc)}))
        else:
            print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    rows = [dict(s.to_dict(), face=i) for i, m in enumerate(matches) for s in m.scores]
    missing = any(s.value is None for m in matches for s in m.scores)
    if as_json:
        print(json.dumps({"clean": str(args.clean), "other": str(args.other),
                          "detector": detector.name, "scores": rows}, indent=2))
    else:
        print(_table(rows))
    return EXIT_NO_FACE if missing else EXIT_SCORED
