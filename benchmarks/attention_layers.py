"""Memory of captured attention maps on SD 1.5's UNet: which layers layer 1's loss can afford.

Two parts:
1. Analytic, at any working size (default 512 px): for every attention layer of SD 1.5's UNet
   (built on the meta device: no memory, no weights) its kind, level, query tokens, heads and
   the fp32 bytes of its probability map for one photo. A captured map stays alive for the
   backward pass (it is the tensor multiplied with V), so this is what capturing it adds.
2. Measured: one forward + backward of the random-weight UNet at a small size (default 256 px,
   CPU), in a fresh process per configuration, peak RSS above the RSS after building it:
   SDPA everywhere, the default choice (``AttentionChoice()``), and every layer.

Usage::

    python benchmarks/attention_layers.py --size 512 --measure-size 256 --json attn.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fine_tune_shield import reset_rss_peak, rss_peak_bytes, sd15_unet  # noqa: E402
from dladiff_app.engine.shield.attention import (  # noqa: E402
    EVERY_LAYER,
    AttentionChoice,
    AttentionStore,
    attention_distance,
    capturing,
    chosen_layers,
    layer_kind,
    layer_level,
    map_bytes,
)

CHOICES = {"sdpa": AttentionChoice(None, None), "default": AttentionChoice(),
           "every": EVERY_LAYER}


def analytic(size: int) -> list[dict[str, object]]:
    """One row per attention layer of SD 1.5 at working size ``size``."""
    with torch.device("meta"):
        unet = sd15_unet()
    modules = dict(unet.named_modules())
    n_levels = len(unet.config.block_out_channels)
    default = set(chosen_layers(unet, AttentionChoice()))
    rows = []
    for name in unet.attn_processors:
        level = layer_level(name, n_levels)
        side = size // 8 // 2**level
        kind = layer_kind(name)
        heads = int(modules[name.removesuffix(".processor")].heads)
        rows.append({"layer": name.removesuffix(".processor"), "kind": kind, "level": level,
                     "queries": side * side, "heads": heads,
                     "bytes": map_bytes(kind, side * side, heads),
                     "default_choice": name in default})
    return rows


def rss_now_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure_one(config: str, size: int) -> dict[str, float]:
    """Seconds and peak RSS above the built model's RSS of one forward + backward (to the
    latents) of the random-weight UNet, the captured maps in the loss as layer 1 has them."""
    torch.manual_seed(0)
    unet = sd15_unet().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    lat = size // 8
    latents = torch.randn(1, 4, lat, lat, generator=gen).requires_grad_(True)
    cond = torch.randn(1, 77, 768, generator=gen)
    store = AttentionStore()
    built = rss_now_bytes()
    reset_rss_peak()
    t0 = time.perf_counter()
    with capturing(unet, store, CHOICES[config]) as names:
        pred = unet(latents, torch.tensor([500]), encoder_hidden_states=cond).sample
        loss = pred.pow(2).mean()
        maps = store.take()
        if maps:
            reference = {k: v.detach() * 0.5 for k, v in maps.items()}
            loss = loss + attention_distance(reference, maps).sum()
        loss.backward()
    return {"config": config, "layers": len(names), "seconds": time.perf_counter() - t0,
            "model_rss_bytes": built, "peak_above_model_bytes": rss_peak_bytes() - built}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512, help="working size of the analytic table")
    ap.add_argument("--measure-size", type=int, default=256, help="0: skip the measurement")
    ap.add_argument("--json", type=Path, default=Path("attention_layers.json"))
    ap.add_argument("--one", choices=list(CHOICES), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one, args.measure_size)))
        return 0

    rows = analytic(args.size)
    mib = 2**20
    print(f"SD 1.5 attention maps at {args.size} px, fp32, one photo")
    print(f"{'kind':6s}{'level':>6s}{'queries':>9s}{'layers':>8s}{'MiB each':>10s}"
          f"{'default':>9s}")
    groups: dict[tuple[str, int], list[dict[str, object]]] = {}
    for r in rows:
        groups.setdefault((str(r["kind"]), int(str(r["level"]))), []).append(r)
    for (kind, level), rs in sorted(groups.items()):
        print(f"{kind:6s}{level:6d}{rs[0]['queries']:9d}{len(rs):8d}"
              f"{int(str(rs[0]['bytes'])) / mib:10.1f}{'yes' if rs[0]['default_choice'] else 'no':>9s}")
    total = {name: sum(int(str(r["bytes"])) for r in rows if keep(r)) / mib for name, keep in
             (("every", lambda r: True), ("default", lambda r: bool(r["default_choice"])))}
    print(f"total MiB per photo: every layer {total['every']:.0f}, default {total['default']:.0f}")

    measured = []
    if args.measure_size:
        for config in CHOICES:
            out = subprocess.run([sys.executable, __file__, "--one", config,
                                  "--measure-size", str(args.measure_size)],
                                 capture_output=True, text=True, check=True)
            measured.append(json.loads(out.stdout.strip().splitlines()[-1]))
            m = measured[-1]
            print(f"{args.measure_size} px {config:8s}: {m['layers']:2d} captured layers, "
                  f"forward+backward {m['seconds']:.1f} s, peak RSS above the model "
                  f"{m['peak_above_model_bytes'] / 2**30:.2f} GiB", flush=True)
    args.json.write_text(json.dumps({"size": args.size, "rows": rows, "total_mib": total,
                                     "measure_size": args.measure_size,
                                     "measured": measured}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
