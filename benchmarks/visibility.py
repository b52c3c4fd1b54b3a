"""How visible is the protection at each preset, next to how well it protects (same run).

For each preset, every photo of the set is protected by the zero-shot shield as the app does it
(``benchmarks/transfer.py``'s ``run_photo``), and the file as written is measured:

- on the faces (box widened 1.5x): SSIM on luma, mean and 95th-percentile CIEDE2000
  (about 2.3 is a just-noticeable difference), and the smooth shading that SSIM misses
  (``shading.py``: the low-passed luma change and the SSIM at a 4x downscale);
- on the whole photo: PSNR and SSIM;
- beside it, the protection of the same files after sharing (JPEG q75 + 1080 px): the share of
  faces past each judge's same-person line and the mean similarity, white-box and held-out.

Usage::

    python benchmarks/visibility.py --set heldout --presets low medium high [--threads 1]
    python benchmarks/visibility.py --set tune --shield texture_floor=0.3   # a design variant

Results: ``--out`` (default benchmarks/out/visibility) gets ``visibility.md``; the committed
tables live in ``benchmarks/results/visibility_cpu.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from judging import PHOTO_SETS, load_judges, photo_set  # noqa: E402
from transfer import Photos, load_encoders, run_photo, shield_options  # noqa: E402

from dladiff_app.core.presets import preset  # noqa: E402


def summary_row(name: str, results: list[dict], judges) -> str:
    faces = [row for r in results for row in r["rows"]]
    vis = [r for r in results if r["face_ssim"] is not None]
    w = [r["faces"] for r in vis]
    cells = [name, f"{np.average([r['face_ssim'] for r in vis], weights=w):.4f}",
             f"{np.average([r['face_de_mean'] for r in vis], weights=w):.2f}",
             f"{np.average([r['face_de_p95'] for r in vis], weights=w):.2f}",
             f"{np.average([r['face_shade'] for r in vis], weights=w):.2f}",
             f"{np.average([r['face_ssim4'] for r in vis], weights=w):.4f}",
             f"{np.mean([r['psnr'] for r in results]):.2f}", f"{np.mean([r['ssim'] for r in results]):.4f}"]
    for j in judges:
        got = [row[f"{j.name}:shared"] for row in faces if row[f"{j.name}:shared"] is not None]
        hidden = sum(not j.same(v) for v in got)
        cells.append(f"{hidden}/{len(faces)} ({np.mean(got):.3f})")
    cells.append(f"{np.mean([r['s_per_face'] for r in results]):.1f}")
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--set", choices=PHOTO_SETS, default="heldout")
    ap.add_argument("--presets", nargs="*", default=["low", "medium", "high"])
    ap.add_argument("--encoders", nargs="*", default=["dlib", "sface", "edgeface"])
    ap.add_argument("--shield", nargs="*", default=[], help="ShieldOptions overrides key=value")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/visibility"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from dladiff_app.engine.faces.dlib_detect import DlibDetector

    args.out.mkdir(parents=True, exist_ok=True)
    photos = photo_set(args.set, args.out / "inputs")
    detector = DlibDetector()
    judges = load_judges()
    encoders = load_encoders(args.encoders)
    clean = Photos(photos, detector, judges)
    opts = shield_options(args.shield)
    head = ["preset", "face SSIM", "face dE mean", "face dE p95", "face shade",
            "face SSIM 4x", "PSNR", "SSIM"]
    head += [f"{j.name}{' (held-out)' if j.held_out else ''} hidden (mean)" for j in judges]
    head.append("s/face")
    lines = [f"## visibility and protection, set {args.set}, encoders "
             f"{'+'.join(e.name for e in encoders)}, options {opts}, {args.threads} thread(s), "
             f"load average {os.getloadavg()[0]:.2f}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in args.presets:
        settings = preset(name)
        tag = f"{name}-vis"
        results = [run_photo(item, clean, encoders, judges, detector, settings, opts, args.out,
                             tag) for item in clean.items]
        lines.append(summary_row(f"{name} ({settings.eps:g}/255)", results, judges))
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    (args.out / "visibility.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
