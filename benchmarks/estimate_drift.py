"""How far the time estimate is from the time a job really takes, before and during the run.

Runs the real engine (the app's ``EngineProtectService``: offline detector and every available
identity encoder, zero-shot shield) on photos with different face counts: insightface's group
photo t1.jpg (6 faces), skimage's astronaut (1 face) and coffee (no face). Prints, side by side:

- the estimate the app shows before Protect (faces counted by the engine's own detector), and the
  old one-face-per-photo estimate for comparison;
- the ETA the run reported at about a quarter, half and three quarters of its time, next to the
  time that really was left;
- the final time.

Usage::

    python benchmarks/estimate_drift.py [--steps 20] [--threads 1] [--preset medium]

Keep ``--steps`` small on a CPU: the drift is a ratio, it does not need the full preset.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sample_album(folder: Path) -> list[Path]:
    """t1.jpg and astronaut (the zero-shot benchmark's photos) and coffee, in one folder."""
    from PIL import Image
    from skimage import data

    from benchmarks.zero_shot import builtin_photos

    out = []
    for photo in builtin_photos(folder):
        if photo.parent != folder:  # t1.jpg lies in the insightface package: copy it
            shutil.copyfile(photo, folder / photo.name)
        out.append(folder / photo.name)
    out.append(folder / "coffee.png")
    Image.fromarray(data.coffee()).save(out[-1])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="zero-shot steps per face")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--preset", default="medium")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from dladiff_app.core.cancel import CancelToken
    from dladiff_app.core.events import Event, Progress
    from dladiff_app.core.imageio import load_image
    from dladiff_app.core.jobs import ProtectJob
    from dladiff_app.core.presets import Layers, preset
    from dladiff_app.core.settings import Settings
    from dladiff_app.engine.services import build_services

    work = Path(tempfile.mkdtemp(prefix="dladiff-estimate-"))
    try:
        photos = sample_album(work / "in" / "album")
        settings = preset(args.preset).with_overrides(layers=Layers.ZEROSHOT,
                                                      layer2_steps=args.steps)
        services = build_services(Settings(device="cpu"))
        protect = services.protect
        sizes = [load_image(p).pixels.shape for p in photos]
        mp = sum(h * w for h, w, _ in sizes) / len(sizes) / 1e6
        started = time.perf_counter()
        faces = protect.count_faces(photos)
        counting = time.perf_counter() - started
        counts = [f or 0 for f in faces]
        per_face = protect.estimate_seconds(len(photos), settings, mp, faces=counts)
        one_each = protect.estimate_seconds(len(photos), settings, mp)

        samples: list[tuple[float, float | None]] = []  # (elapsed, eta) at each progress event
        t0 = time.perf_counter()

        def sink(event: Event) -> None:
            if isinstance(event, Progress):
                samples.append((time.perf_counter() - t0, event.eta_s))

        job = ProtectJob(inputs=(work / "in" / "album",), output_dir=work / "out", settings=settings)
        summary = protect.protect(job, sink, CancelToken())
        total = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"photos: {', '.join(p.name for p in photos)}; faces found: {counts} "
          f"(counted in {counting:.1f} s)")
    print(f"zero-shot shield, {args.steps} steps per face, {args.threads} torch thread(s), "
          f"load average {load:.1f}; done {summary.done}, failed {summary.failed}")
    print()
    print("| when | estimate: time left | really left | ratio |")
    print("|---|---|---|---|")
    print(f"| before Protect (per face, as the app shows) | {per_face:.1f} s | {total:.1f} s | "
          f"{per_face / total:.2f} |")
    print(f"| before Protect (one face per photo, the old rule) | {one_each:.1f} s | {total:.1f} s "
          f"| {one_each / total:.2f} |")
    for share in (0.25, 0.5, 0.75):
        at = next(((t, eta) for t, eta in samples if t >= share * total and eta is not None),
                  None)
        if at is None:
            continue
        t, eta = at
        left = total - t
        print(f"| after {t:.1f} s ({share:.0%} of the run) | {eta:.1f} s | {left:.1f} s | "
              f"{eta / left:.2f} |" if left > 0 else "")
    print(f"| final | | {total:.1f} s | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
