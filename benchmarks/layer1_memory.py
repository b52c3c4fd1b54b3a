"""Peak memory of one layer-1 PGD pass on the full SD 1.5 architecture (random weights), per
setting: views per pass, each surrogate term's backward on its own or both at once, gradient
checkpointing, working size, precision. The numbers behind ``engine/shield/memory_plan.py``.

Where no GPU is at hand the estimate runs on the meta device (no memory, no arithmetic): a
dispatch mode adds up the bytes of every tensor storage alive after each op (a storage counts
until autograd and Python have both let go of it) and keeps the peak; the frozen weights are
counted from their parameter sizes. On the meta device SDPA falls back to its math path, which
keeps the attention probabilities (4096 x 4096 per head at 512 px, the "math" column); CUDA in
half precision, and the CPU, take a fused (flash) kernel, which keeps only q, k, v, the output
and a log-sum-exp per row: the "flash" column models that kernel's saved tensors instead. Allocator overhead
(caching, fragmentation) is not in the estimate: the planner keeps a margin for it, and one real
run calibrates it (``--measure``: a child process on the CPU, peak RSS, fp32).

    python benchmarks/layer1_memory.py                   # the table at 512 px (meta, ~30 s)
    python benchmarks/layer1_memory.py --measure 256     # + one real CPU run at 256 px (~5 GB)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages alive after each op since entering, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.now = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref.cdata not in self.live:
                    self.live[ref.cdata] = (ref, storage.nbytes())
                    self.now += storage.nbytes()
        self.peak = max(self.peak, self.now)
        for key in [k for k, (r, _) in self.live.items() if r.expired()]:
            self.now -= self.live.pop(key)[1]
        return out


class _FlashLikeAttention(torch.autograd.Function):
    """The memory of a flash-attention kernel: keeps q, k, v, the output and one fp32
    log-sum-exp per query row; the backward gives gradients of q, k, v's shapes."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@contextlib.contextmanager
def flash_like_sdpa() -> Iterator[None]:
    """``F.scaled_dot_product_attention`` replaced by :class:`_FlashLikeAttention` (diffusers'
    attention processors look the function up at each call)."""
    original = F.scaled_dot_product_attention

    def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, **kwargs: Any
             ) -> torch.Tensor:
        return _FlashLikeAttention.apply(q, k, v)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def sd15_parts(device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """SD 1.5's UNet and VAE (published configs), random or empty weights, frozen."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
            sample_size=512, block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4)
    for m in (unet, vae):
        m.to(dtype).requires_grad_(False).eval()
    return unet, vae


def weight_bytes(*modules: Any) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


@dataclass(frozen=True)
class Setting:
    views: int          # photo views in one pass (photos x attacker views)
    split: bool         # each surrogate term's backward on its own
    checkpointing: bool
    size: int = 512


def pgd_pass(unet: Any, vae: Any, s: Setting, device: str, dtype: torch.dtype,
             terms: int = 2) -> Callable[[], None]:
    """One PGD pass of the dual loss: VAE encode, ``terms`` UNet losses, gradient to the
    pixels, either jointly or term by term through a latent leaf."""
    def run() -> None:
        x = torch.zeros(s.views, 3, s.size, s.size, device=device, dtype=dtype,
                        requires_grad=True)
        cond = torch.zeros(s.views, 77, 768, device=device, dtype=dtype)
        t = torch.zeros(s.views, dtype=torch.long, device=device)
        latents = vae.encode(x * 2 - 1).latent_dist.sample() * 0.18215

        def term(lat: torch.Tensor) -> torch.Tensor:
            pred = unet(lat, t, encoder_hidden_states=cond).sample
            return F.mse_loss(pred.float(), torch.zeros_like(pred, dtype=torch.float32))

        if s.split:
            leaf = latents.detach().requires_grad_(True)
            grad = torch.zeros_like(leaf)
            for _ in range(terms):
                grad = grad + torch.autograd.grad(term(leaf), leaf)[0]
            torch.autograd.grad(latents, x, grad)
        else:
            loss = sum(term(latents) for _ in range(terms))
            assert isinstance(loss, torch.Tensor)
            torch.autograd.grad(loss, x)
    return run


def estimate(s: Setting, dtype: torch.dtype, attention: str, parts: tuple[Any, Any]) -> int:
    """Peak bytes of one pass on the meta device: activations plus the frozen weights."""
    unet, vae = parts
    for m in (unet, vae):
        if s.checkpointing:
            m.enable_gradient_checkpointing()
        else:
            m.disable_gradient_checkpointing()
        m.train(s.checkpointing)  # some diffusers blocks checkpoint only in training mode
    attn = flash_like_sdpa() if attention == "flash" else contextlib.nullcontext()
    with attn, LiveBytes() as live:
        pgd_pass(unet, vae, s, "meta", dtype)()
    return live.peak + weight_bytes(unet, vae)


def _rss_child(size: int) -> None:
    """The real pass at ``size`` px on the CPU in fp32 (split, 1 view); prints JSON."""
    import resource

    torch.manual_seed(0)
    unet, vae = sd15_parts("cpu", torch.float32)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    pgd_pass(unet, vae, Setting(1, True, False, size), "cpu", torch.float32)()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"rss_after_build": base, "rss_peak": peak,
                      "seconds": time.perf_counter() - started}))


def measure(size: int) -> dict[str, float]:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    out = subprocess.run([sys.executable, __file__, "--child", str(size)], env=env,
                         capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# What a CUDA context, cuDNN/cuBLAS workspaces, both LoRA adapters with AdamW moments and the
# face encoders take before layer 1's first pass (assumed, not measured: no GPU was lent).
OTHER_RESIDENT = int(0.6 * 2**30)


def card_plans(weights_half: int) -> list[dict[str, Any]]:
    """The planner's choice for a 4-photo album at 512 px (2 views per photo: every preset's
    attacker views) on CUDA cards of several sizes, with the planned total peak."""
    from dladiff_app.engine.shield.memory_plan import plan_layer1

    out = []
    for gib in (6, 8, 12, 16, 24, 80):
        free = gib * 2**30 - OTHER_RESIDENT - weights_half
        plan = plan_layer1(free, photos=4, views_per_photo=2, size=512, element_bytes=2)
        out.append({"card_gib": gib, "micro_batch": plan.micro_batch,
                    "checkpointing": plan.checkpointing, "fits": plan.fits,
                    "activation_bytes": plan.activation_bytes,
                    "planned_peak_bytes": plan.activation_bytes + weights_half + OTHER_RESIDENT})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--measure", type=int, default=0,
                    help="also measure one real CPU pass at this size (fp32, 1 view, split)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                    "layer1_memory.json")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _rss_child(args.child)
        return 0
    rows = []
    half = torch.bfloat16
    parts = sd15_parts("meta", half)
    for views in (1, 2, 4, 8):
        for split in (False, True):
            for ckpt in (False, True):
                s = Setting(views, split, ckpt, args.size)
                rows.append({"views": views, "split": split, "checkpointing": ckpt,
                             "size": args.size, "dtype": "bf16/fp16",
                             "peak_flash": estimate(s, half, "flash", parts),
                             "peak_math": estimate(s, half, "math", parts)})
    fp32_parts = sd15_parts("meta", torch.float32)
    per_view: dict[str, int] = {}
    for name, s, dtype, p in (
            ("half_split", Setting(1, True, False, args.size), half, parts),
            ("half_split_2", Setting(2, True, False, args.size), half, parts),
            ("half_split_ckpt", Setting(1, True, True, args.size), half, parts),
            ("half_split_ckpt_2", Setting(2, True, True, args.size), half, parts),
            ("fp32_split", Setting(1, True, False, args.size), torch.float32, fp32_parts),
            ("fp32_split_2", Setting(2, True, False, args.size), torch.float32, fp32_parts)):
        per_view[name] = estimate(s, dtype, "flash", p)
    report: dict[str, Any] = {
        "rows": rows, "weights_half": weight_bytes(*parts),
        "weights_fp32": weight_bytes(*fp32_parts), "points": per_view,
    }
    if args.measure:
        report["measured"] = {"size": args.measure, **measure(args.measure)}
        s = Setting(1, True, False, args.measure)
        # The CPU's SDPA is a fused (flash) kernel too: it keeps no probabilities.
        report["measured"]["estimate_fp32_flash"] = estimate(s, torch.float32, "flash",
                                                             fp32_parts)
    report["plans"] = card_plans(report["weights_half"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    gib = 2**30
    print("| views/pass | terms' backward | checkpointing | peak, flash attention (GiB) "
          "| peak, math attention (GiB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['views']} | {'one by one' if r['split'] else 'together'} | "
              f"{'on' if r['checkpointing'] else 'off'} | {r['peak_flash'] / gib:.2f} | "
              f"{r['peak_math'] / gib:.2f} |")
    print("\n| card (GiB) | photos per pass | checkpointing | planned peak (GiB) |")
    print("|---|---|---|---|")
    for p in report["plans"]:
        print(f"| {p['card_gib']} | {p['micro_batch']} | {'on' if p['checkpointing'] else 'off'}"
              f" | {p['planned_peak_bytes'] / gib:.2f}{'' if p['fits'] else ' (does not fit)'} |")
    print(json.dumps({k: v for k, v in report.items() if k not in ("rows", "plans")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
