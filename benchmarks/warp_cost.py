"""What the shield's antialiased face crops cost: one crop forward and backward, side by side.

A large face (the held-out Obama photos: an ArcFace crop shrinks them about 3x) is cut to the
112 px crop three ways, each timed forward + backward on one thread, interleaved in one run:

- ``exact``: the crop as an attack tool's cv2 takes it (``warp_affine``, no antialiasing);
- ``gaussian``: the reference antialiasing, a Gaussian of the whole source region at the
  shield's factor, then the exact crop;
- ``shipped``: ``warp_affine`` inside ``antialiased_warps(factor)`` (k x k box average first,
  then a Gaussian on the pooled crop).

Usage::

    python benchmarks/warp_cost.py [--shrink 0.36] [--factor 2] [--repeats 50]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dladiff_app.engine.faces.align import (  # noqa: E402
    antialias_sigma,
    antialiased_warps,
    gaussian_blur,
    warp_affine,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shrink", type=float, default=0.36, help="crop / source scale")
    ap.add_argument("--factor", type=float, default=2.0, help="ShieldOptions.antialias")
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    side = int(round(112 / args.shrink)) + 40
    img = torch.rand((1, 3, side, side), generator=torch.Generator().manual_seed(0))
    a = args.shrink * np.array([[np.cos(0.1), np.sin(0.1)], [-np.sin(0.1), np.cos(0.1)]])
    m = np.hstack([a, (56.0 - a @ [side / 2, side / 2])[:, None]])
    sigma = args.factor * antialias_sigma(m)

    def exact(x: torch.Tensor) -> torch.Tensor:
        return warp_affine(x, m, 112)

    def gaussian(x: torch.Tensor) -> torch.Tensor:
        return warp_affine(gaussian_blur(x, sigma), m, 112)

    def shipped(x: torch.Tensor) -> torch.Tensor:
        with antialiased_warps(args.factor):
            return warp_affine(x, m, 112)

    ways = {"exact": exact, "gaussian": gaussian, "shipped": shipped}
    spent = dict.fromkeys(ways, 0.0)
    load = os.getloadavg()[0]
    for r in range(args.repeats + 3):
        for name, fn in ways.items():
            x = img.clone().requires_grad_(True)
            t = time.perf_counter()
            fn(x).square().sum().backward()
            if r >= 3:  # the first rounds warm the allocator up
                spent[name] += time.perf_counter() - t
    print(f"source {side} px, shrink {args.shrink}, factor {args.factor} (sigma {sigma:.2f} px), "
          f"{args.repeats} repeats, 1 thread, load average {load:.2f}")
    print("| crop | ms forward + backward | vs exact |\n|---|---|---|")
    base = spent["exact"]
    for name, s in spent.items():
        print(f"| {name} | {1000 * s / args.repeats:.2f} | {s / base:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
