"""Does layer 1's effect on an independent attacker hold at the crops and flips the attacker's
training script takes? Per-offset table on the tiny random SD (CPU, a minute or two).

The same two-photo album (70x90 and 96x64, the shapes tests/engine/test_layer1.py uses) is
protected at the same budget and steps under several view policies (``shield.views``): the
centre crop only, and EOT variants over crop offset, flip and instance prompt. Then an
independent attacker LoRA (tests/fixtures/lora_attack.py) is trained on the clean and on each
protected album at fixed views: the crop at the start, centre and end of the photo's crop
range, plain and mirrored. The gap (protected - clean loss after training) is the effect;
positive = the attacker learned the face worse.

    python benchmarks/layer1_views.py --out benchmarks/results/layer1_views_cpu.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dladiff_app.engine.shield import surrogate as sg  # noqa: E402
from dladiff_app.engine.shield.layer1 import protect_album_layer1  # noqa: E402
from dladiff_app.engine.shield.views import CENTRE_ONLY, ViewPolicy  # noqa: E402
from tests.engine.test_layer1 import LORA_LR, SETTINGS, _photo  # noqa: E402
from tests.fixtures.lora_attack import attacker_loss  # noqa: E402
from tests.fixtures.tiny_sd import TINY_SD_RESOLUTION, build_tiny_sd  # noqa: E402

POSITIONS = (0.0, 0.5, 1.0)
POLICIES = {
    "centre": ("centre crop only", CENTRE_ONLY),
    "pairs": ("random offset, plain+mirrored pair", ViewPolicy(offsets=True)),
    "centre-pairs": ("centre crop, plain+mirrored pair (the default)", ViewPolicy()),
    "half-centre": ("pair; random offset on half the steps",
                    ViewPolicy(offsets=True, centre_share=0.5)),
    "prompts": ("random offset, pair, random prompt", ViewPolicy(offsets=True, prompts=True)),
    "single": ("random offset and flip, one view", ViewPolicy(offsets=True, flip_pairs=False)),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--policies", nargs="+", default=["centre", "pairs", "centre-pairs"],
                    choices=sorted(POLICIES))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = TINY_SD_RESOLUTION
    clean = [_photo(70, 90, 1), _photo(96, 64, 2)]
    views = [(w, f) for f in (False, True) for w in POSITIONS]
    gaps: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sd = build_tiny_sd(Path(tmp) / "sd")
        sur = sg.load_surrogate(sd)
        # The attacker on the clean album is the same for every policy: trained once per view.
        on_clean = {v: attacker_loss(sur, clean, size, *v, name=f"clean{i}")
                    for i, v in enumerate(views)}
        for key in args.policies:
            t0 = time.perf_counter()
            res = protect_album_layer1(clean, sd, SETTINGS, working_size=size, lora_lr=LORA_LR,
                                       views=POLICIES[key][1])
            seconds[key] = time.perf_counter() - t0
            gaps[key] = [attacker_loss(sur, res.protected, size, *v, name=f"{key}{i}")
                         - on_clean[v] for i, v in enumerate(views)]
            print(key, [round(g, 4) for g in gaps[key]], flush=True)
    head = " | ".join(f"{'mirrored ' if f else ''}crop {w:g}" for w, f in views)
    lines = [
        "# Layer 1 at the attacker's crop offsets and flips (tiny random SD, CPU)",
        "",
        f"Command: `python benchmarks/layer1_views.py --policies {' '.join(args.policies)}` "
        f"({args.threads} torch thread, a shared 2-core machine). Album: two photos 70x90 and "
        "96x64, working size 64 px; settings of tests/engine/test_layer1.py (eps "
        f"{SETTINGS.eps:g}/255, {SETTINGS.layer1_rounds} x {SETTINGS.layer1_pgd_steps} PGD "
        f"steps, {SETTINGS.prior_steps} prior steps, LoRA lr {LORA_LR:g}). Attacker: a fresh "
        "LoRA (seed 123), 30 steps at lr 1e-3 on the 8-bit album seen at one fixed view, its "
        "loss after training on its own images (3 seeds x 5 timesteps). Cell: protected - "
        "clean attacker loss (higher = the attacker learned the face worse); crop position 0 "
        "/ 0.5 / 1 = start / centre / end of the photo's crop range.",
        "",
        f"| layer 1 optimised for (time) | {head} | mean |",
        "|---|" + "---|" * (len(views) + 1),
    ]
    for key, row in gaps.items():
        lines.append(f"| {POLICIES[key][0]} ({seconds[key]:.0f} s) | "
                     + " | ".join(f"{g:+.4f}" for g in row) + f" | {sum(row) / len(row):+.4f} |")
    lines += ["", "Clean-album attacker loss per view (for scale): "
              + ", ".join(f"{v[0]:.3f}" for v in [(on_clean[k],) for k in views])]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
