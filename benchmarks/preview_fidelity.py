"""Does the quick preview look like the real run? Face visibility after the preview's few steps
vs after the preset's full zero-shot steps, on the same face crop, through the same code path.

    python benchmarks/preview_fidelity.py [--presets low medium high] [--photos astronaut t1]

For each photo and preset, ``engine.face_preview.preview_face`` runs twice with the installed
offline face models (dlib, SFace when present): once with a kit built for the preview's steps
(``PREVIEW_STEPS``) and once with the preset's own ``layer2_steps``. Prints face SSIM, mean and
95th-percentile CIEDE2000 of both, the seconds of each, and each encoder's verdict on the crop.
One torch thread; the machine's load is printed, since the times depend on it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _photo(name: str):  # type: ignore[no-untyped-def]
    from tests.engine import real_photos

    return {"astronaut": real_photos.astronaut, "t1": real_photos.t1}[name]()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["low", "medium", "high"])
    parser.add_argument("--photos", nargs="+", default=["astronaut"])
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from dladiff_app.core.cancel import CancelToken
    from dladiff_app.core.presets import PRESETS
    from dladiff_app.engine.face_preview import PREVIEW_STEPS, preview_face, preview_settings
    from dladiff_app.engine.faces import registry
    from dladiff_app.engine.kit import _default_store, build_kit

    store = _default_store()
    detector, encoders = registry.available_detector(store), registry.available_encoders(store)
    print(f"encoders: {', '.join(e.name for e in encoders)}; load {os.getloadavg()[0]:.1f}")
    print("| photo | preset | steps | face SSIM | ΔE mean | ΔE p95 | seconds | verdicts |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.photos:
        pixels = _photo(name)
        for preset in args.presets:
            base = PRESETS[preset]
            for steps in (PREVIEW_STEPS, base.layer2_steps):
                settings = preview_settings(base, steps)
                kit = build_kit(settings, device="cpu", detector=detector, encoders=encoders,
                                store=store)
                t0 = time.monotonic()
                p = preview_face(name, pixels, kit, base.layer2_steps, CancelToken())
                verdicts = ", ".join(f"{s.encoder} {s.verdict}" for s in p.scores)
                print(f"| {name} | {preset} | {p.steps} | {p.face_ssim:.4f} | "
                      f"{p.face_de_mean:.2f} | {p.face_de_p95:.2f} | "
                      f"{time.monotonic() - t0:.1f} | {verdicts} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
