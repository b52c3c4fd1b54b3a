"""Peak memory (RSS) of ``dladiff protect`` and ``dladiff score`` on big photos and albums.

Each case runs the real command line in a child process and reads the child's peak resident set
size from the kernel (``os.wait4`` rusage, ``ru_maxrss``), so nothing of this script's own
memory is counted. Photos are synthesised from the real face photos that ship with installed
packages (``skimage.data.astronaut``, insightface's ``t1.jpg`` when present), upscaled (Lanczos)
to the asked size, each one cropped/flipped differently so every file is a different photo, and
saved as JPEG q92 (what a phone writes).

Cases (zero-shot shield only, ``--layer2-steps`` few steps to keep it short: memory does not grow
with the step count):

- ``largest``: the album's largest photo alone;
- ``album``: the whole album (``--photos``, default 24, of ``--mp`` megapixels) in one job;
- ``48mp``: one ``--big-mp`` photo protected (scoring included), then ``dladiff score`` on it.

Usage::

    python benchmarks/memory.py [--photos 24] [--mp 12] [--big-mp 48] [--layer2-steps 3]
                                [--work DIR] [--out benchmarks/results/memory_cpu.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _sources() -> list[Image.Image]:
    from skimage import data

    found = [Image.fromarray(data.astronaut())]
    try:
        import importlib.util

        spec = importlib.util.find_spec("insightface")
        if spec is not None and spec.submodule_search_locations:
            t1 = Path(list(spec.submodule_search_locations)[0]) / "data" / "images" / "t1.jpg"
            if t1.is_file():
                found.append(Image.open(t1).convert("RGB"))
    except ImportError:
        pass
    return found


def synthesise(folder: Path, count: int, megapixels: float, seed: int = 0) -> list[Path]:
    """``count`` JPEGs of about ``megapixels`` MP (4:3), each a different crop/flip of a real
    face photo, upscaled with Lanczos."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = _sources()
    w = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    h = int(round(w * 3 / 4))
    out = []
    for i in range(count):
        src = sources[i % len(sources)]
        sw, sh = src.size
        # A 4:3 crop (never stretched: a distorted face is not found), 85-100 % of what fits.
        fit_w = min(sw, int(sh * 4 / 3))
        cw = int(fit_w * rng.uniform(0.85, 1.0))
        ch = int(cw * 3 / 4)
        x, y = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, min(sh - ch, sh // 8) + 1))
        img = src.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.LANCZOS)
        if i % 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f"photo_{i:02d}.jpg"
        img.save(path, "JPEG", quality=92)
        out.append(path)
    return out


def run_measured(args: list[str], cwd: Path) -> tuple[int, float, float]:
    """Run ``dladiff ARGS`` in a child; returns (exit code, peak RSS in MB, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "DLADIFF_DEVICE": "cpu"}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "dladiff_app.cli.main", *args], cwd=cwd,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode not in (0, 3):
        print(err[-3000:], file=sys.stderr)
    return proc.returncode, usage.ru_maxrss / 1024.0, time.monotonic() - t0  # KB on Linux


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--photos", type=int, default=24)
    p.add_argument("--mp", type=float, default=12.0)
    p.add_argument("--big-mp", type=float, default=48.0)
    p.add_argument("--layer2-steps", type=int, default=3)
    p.add_argument("--cases", default="largest,album,48mp")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                   "memory_cpu.md")
    a = p.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="dladiff-mem-"))
    steps = ["--layers", "zeroshot", "--layer2-steps", str(a.layer2_steps), "--preset",
             "medium"]
    cases = a.cases.split(",")
    rows: list[tuple[str, str, int, float, float]] = []
    album = synthesise(work / "album", a.photos, a.mp) if {"largest", "album"} & set(cases) \
        else []
    if "largest" in cases:
        largest = max(album, key=lambda q: q.stat().st_size)
        rc, peak, secs = run_measured(["protect", str(largest), "-o", str(work / "out-one"),
                                       *steps], work)
        rows.append(("largest photo of the album, alone", f"1 x {a.mp:g} MP", rc, peak, secs))
    if "album" in cases:
        rc, peak, secs = run_measured(["protect", str(work / "album"), "-o",
                                       str(work / "out-album"), *steps], work)
        rows.append(("whole album, one job", f"{a.photos} x {a.mp:g} MP", rc, peak, secs))
    if "48mp" in cases:
        (big,) = synthesise(work / "big", 1, a.big_mp, seed=1)
        rc, peak, secs = run_measured(["protect", str(big), "-o", str(work / "out-big"),
                                       *steps], work)
        rows.append(("protect (with scoring)", f"1 x {a.big_mp:g} MP", rc, peak, secs))
        written = next((work / "out-big").rglob("*-protected.png"), None)
        if written is not None:
            rc, peak, secs = run_measured(["score", str(big), str(written)], work)
            rows.append(("dladiff score original vs protected", f"1 x {a.big_mp:g} MP", rc,
                         peak, secs))
    load = os.getloadavg()[0]
    lines = ["| case | photos | exit | peak RSS (MB) | seconds |", "|---|---|---|---|---|"]
    lines += [f"| {c} | {ph} | {rc} | {peak:.0f} | {secs:.0f} |" for c, ph, rc, peak, secs in rows]
    table = "\n".join(lines)
    print(table)
    header = (f"Measured by `python benchmarks/memory.py {' '.join(sys.argv[1:])}` on "
              f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, "
              f"1 torch thread, CPU only, load average {load:.1f}; zero-shot shield only, "
              f"{a.layer2_steps} layer-2 steps, offline dlib models.")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        previous = a.out.read_text() if a.out.exists() else "# Peak memory (RSS)\n"
        a.out.write_text(previous.rstrip("\n") + "\n\n" + header + "\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
