"""Ablation of layer 1 (the paper's Table 5 rows that can run without real weights), judged by
an independent attacker LoRA.

Rows, on one album and one protection seed each:

- ``clean``: the clean photos (the attacker's baseline);
- ``uniform``: uniform noise in [-eps_ft, eps_ft] (the fine-tuning budget, 7/255 at Medium);
- ``full``: layer 1 as shipped, DSUR + ADFT (``iter1`` attention-loss PGD, ``iter2``
  denoising-loss PGD, ``iter3`` fine-tuning steps of the dynamic surrogate per epoch);
- ``no_dsur``: no attention term (``iter1`` = 0); stage 2 takes its PGD steps
  (``iter2 + iter1``) so every layer-1 row spends the same number of PGD steps; the static
  surrogate is not trained (nothing reads it);
- ``no_adft``: the dynamic surrogate is never fine-tuned (``iter3`` = 0);
- ``neither``: both off: PGD on the plain base model's denoising loss only.

Each protected album is saved as 8-bit values, then an attacker LoRA (its own seed and
initialisation, never one layer 1 used; the same seed, noise and steps for every row of a
seed) is trained on the DreamBooth centre crop of it. Measured on the CLEAN photos with fixed
(seed, timestep) draws: the attacker's denoising loss (higher: it modelled the real face
worse) and its attention deviation: the squared distance of its attention maps (the layers
layer 1 captures) from those of the attacker trained on the clean album, summed over layers,
per image. ``untrained`` gives that distance's scale: the attacker before training against the
clean-trained one. Time per epoch is layer 1's PGD and fine-tuning time over its epochs (the
static surrogate's training is reported apart).

Models (random weights, nothing downloaded): ``tiny`` is the tests' tiny SD (64 px native);
``sd15`` is SD 1.5's full architecture (``benchmarks/fine_tune_shield.py``), at any working
size. Random weights make the losses a test of the mechanics, not of the paper's numbers.

    python benchmarks/fine_tune_ablation.py --model tiny --seeds 0 1 2
    python benchmarks/fine_tune_ablation.py --model sd15 --size 64 --photos 2 --epochs 2 \\
        --iter1 2 --iter2 2 --iter3 2 --prior-steps 4 --attack-steps 10 --seeds 0
    bash benchmarks/gpu_check.sh --ablation            # CUDA: sd15, 512 px, Medium preset
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fine_tune_shield import album, build_sd15_random  # noqa: E402
from dladiff_app.core.presets import ProtectionSettings, preset  # noqa: E402
from dladiff_app.engine.device import autocast_dtype_for  # noqa: E402
from dladiff_app.engine.shield import surrogate as sg  # noqa: E402
from dladiff_app.engine.shield.attention import (  # noqa: E402
    AttentionStore,
    attention_distance,
    capturing,
)
from dladiff_app.engine.shield.layer1 import Layer1Stats, protect_album_layer1  # noqa: E402
from dladiff_app.engine.shield.precision import grad_scaler_for  # noqa: E402
from dladiff_app.engine.shield.resize import to_working  # noqa: E402
from dladiff_app.engine.shield.views import CENTRE_ONLY, ViewPolicy  # noqa: E402
from tests.fixtures.tiny_sd import build_tiny_sd  # noqa: E402

ROWS = ("clean", "uniform", "full", "no_dsur", "no_adft", "neither")
LAYER1_ROWS = ("full", "no_dsur", "no_adft", "neither")
LABELS = {"clean": "clean photos", "uniform": "uniform noise, same budget",
          "full": "DSUR + ADFT (layer 1 as shipped)", "no_dsur": "w/o DSUR (iter1 = 0)",
          "no_adft": "w/o ADFT (iter3 = 0)", "neither": "w/o DSUR, w/o ADFT"}
EVAL_SEEDS = (100, 101, 102)
EVAL_TIMESTEPS = (100, 300, 500, 700, 900)
ATTACK_SEED = 5000  # + the row's seed: far from layer 1's seed + 0..11


def row_settings(base: ProtectionSettings, row: str) -> ProtectionSettings:
    """The layer-1 settings of an ablation row (see the module docstring)."""
    if row in ("no_dsur", "neither"):
        base = base.with_overrides(layer1_pgd_steps=0, prior_steps=0,
                                   layer1_denoise_steps=base.iter1 + base.iter2)
    if row in ("no_adft", "neither"):
        base = base.with_overrides(layer1_lora_steps=0)
    return base


def quantised(photos: list[torch.Tensor]) -> list[torch.Tensor]:
    """The photos as their saved 8-bit files would hold them."""
    return [torch.round(x.clamp(0, 1) * 255) / 255 for x in photos]


def uniform_noise(photos: list[torch.Tensor], eps: float, seed: int) -> list[torch.Tensor]:
    """Each photo plus i.i.d. uniform noise in [-eps, eps]/255 per value."""
    gen = torch.Generator().manual_seed(seed)
    return [(x + (torch.rand(x.shape, generator=gen) * 2 - 1) * eps / 255).clamp(0, 1)
            for x in photos]


@dataclass
class AttackerView:
    """An attacker's figures on the clean photos, one entry per fixed eval draw: its denoising
    loss and its head-averaged attention maps ({layer: (N, 1, Q, K) fp32 CPU})."""

    losses: list[float]
    maps: list[dict[str, torch.Tensor]]

    @property
    def loss(self) -> float:
        return sum(self.losses) / len(self.losses)

    def deviation(self, reference: AttackerView) -> float:
        """Mean over draws and images of the attention distance to ``reference``."""
        values = [float(attention_distance(ref, mine).mean())
                  for ref, mine in zip(reference.maps, self.maps, strict=True)]
        return sum(values) / len(values)


def train_attacker(sur: sg.Surrogate, name: str, work: torch.Tensor, seed: int, steps: int,
                   lr: float, rank: int) -> list[float]:
    """A fresh LoRA ``name`` trained ``steps`` steps on working-size images ``work``
    (N, 3, S, S) in [0, 1], the whole album per step; its initial weights and noise depend on
    ``seed`` only. Returns the training losses."""
    sg.add_lora(sur, name, rank=rank, seed=seed)
    opt = sg.make_optimizer(sur, name, lr)
    gen = torch.Generator().manual_seed(seed + 1)
    fixed = [sg.moments(sur, work)]
    size = int(work.shape[-1])
    scaler = grad_scaler_for(sur)
    losses = [sg.lora_step_cached(sur, name, opt, fixed, gen, size, scaler)
              for _ in range(steps)]
    return [float(v) for v in torch.stack(losses).tolist()] if losses else []


def look(sur: sg.Surrogate, name: str, clean_work: torch.Tensor) -> AttackerView:
    """Adapter ``name``'s denoising loss and attention maps on ``clean_work`` (N, 3, S, S),
    for every (seed, timestep) of the fixed evaluation draws."""
    sg.use_adapter(sur, name)
    n, size = int(clean_work.shape[0]), int(clean_work.shape[-1])
    store = AttentionStore()
    losses, maps = [], []
    with torch.no_grad(), capturing(sur.unet, store):
        for seed in EVAL_SEEDS:
            for t in EVAL_TIMESTEPS:
                draw = sg.NoiseDraw.draw(sur, n, size, torch.Generator().manual_seed(seed),
                                         torch.full((n,), t))
                latents = sg.encode(sur, clean_work.to(sur.device), draw)
                losses.append(float(sg.unet_loss(sur, latents, draw)))
                maps.append({k: v.float().mean(dim=1, keepdim=True).cpu()
                             for k, v in store.take().items()})
    return AttackerView(losses, maps)


def epoch_curve(stats: Layer1Stats, key: str) -> list[float | None]:
    return [getattr(e, key) for e in stats.epochs]


def run_seed(sur: sg.Surrogate, folder: Path, photos: list[torch.Tensor],
             base: ProtectionSettings, seed: int, args: argparse.Namespace,
             cache: Path, rows: list[str]) -> dict[str, dict[str, object]]:
    """Every row for one protection seed; returns {row: figures}."""
    size = args.size
    clean_work = torch.cat([to_working(x, size) for x in quantised(photos)])
    attack_seed = ATTACK_SEED + seed

    def attack(name: str, album_: list[torch.Tensor], steps: int) -> tuple[AttackerView,
                                                                             list[float]]:
        work = torch.cat([to_working(x, size) for x in quantised(album_)]).to(sur.device)
        train = train_attacker(sur, name, work, attack_seed, steps, args.attack_lr,
                               args.attack_rank)
        view = look(sur, name, clean_work)
        sg.remove_adapters(sur)
        return view, train

    out: dict[str, dict[str, object]] = {}
    reference, _ = attack("attack_clean", photos, args.attack_steps)
    untrained, _ = attack("attack_untrained", photos, 0)
    out["untrained"] = {"attacker_loss_clean": untrained.loss,
                        "attention_deviation": untrained.deviation(reference)}
    views = ViewPolicy() if base.eot else CENTRE_ONLY
    for row in rows:
        t0 = time.perf_counter()
        fig: dict[str, object] = {}
        if row == "clean":
            protected = photos
        elif row == "uniform":
            protected = uniform_noise(photos, base.finetune_eps, seed)
        else:
            settings = row_settings(base, row).with_overrides(seed=seed)
            res = protect_album_layer1(photos, folder, settings, device=sur.device.type,
                                       working_size=size, cache_dir=cache,
                                       lora_lr=args.lora_lr, surrogate=sur, views=views)
            protected = res.protected
            st = res.stats
            fig.update({
                "settings": {"iter1": settings.iter1, "iter2": settings.iter2,
                             "iter3": settings.iter3, "epochs": settings.epochs,
                             "prior_steps": settings.prior_steps},
                "epoch_seconds": (st.pgd_seconds + st.lora_seconds) / max(1, settings.epochs),
                "prior_seconds": st.prior_seconds, "layer1_seconds": st.seconds,
                "prior_cache_hit": res.prior_cache_hit,
                "l_att": epoch_curve(st, "objective"), "dyn_denoise": epoch_curve(st, "denoise"),
                "dyn_finetune": epoch_curve(st, "finetune"), "step_downs": st.step_downs,
            })
            sg.remove_adapters(sur)
        saved = quantised(protected)
        fig["max_change_255"] = max(float((p - c).abs().max()) * 255
                                    for p, c in zip(saved, quantised(photos), strict=True))
        if row == "clean":
            view, train = reference, []
        else:
            view, train = attack(f"attack_{row}", protected, args.attack_steps)
        fig.update({"attacker_loss_clean": view.loss,
                    "attention_deviation": view.deviation(reference),
                    "attacker_train_loss_last": train[-1] if train else None,
                    "row_seconds": time.perf_counter() - t0})
        out[row] = fig
        print(f"seed {seed} {row:8s} attacker loss on clean {view.loss:.5f}  attention "
              f"deviation {fig['attention_deviation']:.4g}  max change "
              f"{fig['max_change_255']:.2f}/255  {fig['row_seconds']:.0f} s", flush=True)
    return out


def mean_sd(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) \
        if len(values) > 1 else 0.0
    return m, sd


def table(results: dict[int, dict[str, dict[str, object]]], rows: list[str]) -> str:
    """Markdown table over the seeds: mean (sd) per column; the loss gap is paired per seed
    against the clean row."""
    seeds = sorted(results)

    def col(row: str, key: str) -> list[float]:
        return [float(results[s][row][key]) for s in seeds  # type: ignore[arg-type]
                if results[s][row].get(key) is not None]

    lines = ["| row | attacker loss on clean photos | gap vs clean (seeds > 0) "
             "| attention deviation | max change (/255) | time per epoch (s) |",
             "|---|---|---|---|---|---|"]
    clean = col("clean", "attacker_loss_clean")
    for row in [*rows, "untrained"]:
        loss = col(row, "attacker_loss_clean")
        m, sd = mean_sd(loss)
        if row in ("clean", "untrained"):
            gap = "-"
        else:
            gaps = [a - b for a, b in zip(loss, clean, strict=True)]
            gm, gsd = mean_sd(gaps)
            gap = f"{gm:+.5f} ({gsd:.5f}) [{sum(g > 0 for g in gaps)}/{len(gaps)}]"
        dm, dsd = mean_sd(col(row, "attention_deviation"))
        change = col(row, "max_change_255")
        epoch = col(row, "epoch_seconds")
        label = LABELS.get(row, "attacker before training (deviation's scale)")
        lines.append(f"| {label} | {m:.5f} ({sd:.5f}) | {gap} | {dm:.4g} ({dsd:.2g}) | "
                     f"{max(change):.2f} | " if change else
                     f"| {label} | {m:.5f} ({sd:.5f}) | {gap} | {dm:.4g} ({dsd:.2g}) | - | ")
        lines[-1] += f"{mean_sd(epoch)[0]:.2f} |" if epoch else "- |"
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("tiny", "sd15"), default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=None,
                    help="working size (tiny: 64; sd15: 512 on CUDA, 64 on CPU)")
    ap.add_argument("--photos", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--iter1", type=int, default=None)
    ap.add_argument("--iter2", type=int, default=None)
    ap.add_argument("--iter3", type=int, default=None)
    ap.add_argument("--prior-steps", type=int, default=None)
    ap.add_argument("--no-eot", action="store_true", help="centre crop only (no mirrored view)")
    ap.add_argument("--lora-lr", type=float, default=1e-3,
                    help="the surrogates' LoRA learning rate (the product's is 1e-4, for real "
                         "weights; random small models need more to move)")
    ap.add_argument("--attack-steps", type=int, default=60)
    ap.add_argument("--attack-lr", type=float, default=1e-3)
    ap.add_argument("--attack-rank", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model-dir", type=Path, default=None,
                    help="the model folder: reused when it holds a diffusers pipeline (a "
                         "real SD 1.5 works too), else the random model is built there "
                         "(default: a temp folder)")
    ap.add_argument("--json", type=Path, default=Path("fine_tune_ablation.json"))
    ap.add_argument("--md", type=Path, default=None, help="also write the table here")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="only print the table of these JSON files' seeds together (runs of "
                         "the same settings, one seed each)")
    args = ap.parse_args(argv)
    if args.merge:
        runs = [json.loads(p.read_text()) for p in args.merge]
        merged = {int(s): r for run in runs for s, r in run["results"].items()}
        rows = [r for r in ROWS if all(r in res for res in merged.values())]
        print("\n".join(run["head"] for run in runs) + "\n\n" + table(merged, rows))
        return 0
    args.rows = ["clean"] + [r for r in args.rows if r != "clean"]  # every gap's baseline
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if args.size is None:
        args.size = 64 if args.model == "tiny" or dev.type == "cpu" else 512
    base = preset(args.preset).with_overrides(
        layer1_rounds=args.epochs, layer1_pgd_steps=args.iter1, layer1_denoise_steps=args.iter2,
        layer1_lora_steps=args.iter3, prior_steps=args.prior_steps,
        eot=False if args.no_eot else None)
    tmp = Path(tempfile.mkdtemp(prefix="ablation_"))
    folder = args.model_dir or tmp / args.model
    started = time.perf_counter()
    try:
        if not (folder / "model_index.json").is_file():
            (build_tiny_sd if args.model == "tiny" else build_sd15_random)(folder)
        sur = sg.load_surrogate(folder, dev, autocast_dtype_for(dev))
        photos = quantised(album(args.photos, args.size))  # as loaded from 8-bit files
        results = {s: run_seed(sur, folder, photos, base, s, args, tmp / "cache", args.rows)
                   for s in args.seeds}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} torch thread(s)"
    head = (f"{args.model}, {device_name}, {args.size} px, {args.photos} photos "
            f"{tuple(photos[0].shape[-2:])}, seeds {args.seeds}; {base.epochs} epochs x "
            f"(iter1 {base.iter1} + iter2 {base.iter2} PGD, iter3 {base.iter3}), static "
            f"{base.prior_steps} steps, eps_ft {base.finetune_eps:g}/255, step "
            f"{base.step1:.3f}/255, EOT {'plain+mirrored' if base.eot else 'off'}, surrogate "
            f"LoRA lr {args.lora_lr:g}; attacker rank {args.attack_rank}, {args.attack_steps} "
            f"steps at lr {args.attack_lr:g}; total {time.perf_counter() - started:.0f} s")
    text = table(results, args.rows)
    print(f"\n{head}\n\n{text}")
    args.json.write_text(json.dumps({"head": head, "args": {k: str(v) for k, v in
                                                             vars(args).items()},
                                     "results": results}, indent=1))
    if args.md is not None:
        args.md.write_text(f"{head}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
