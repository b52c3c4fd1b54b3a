"""Layer 1, the fine-tuning shield: DSUR dual surrogates + ADFT alternation (METHOD.md).

PGD maximises ``w_dyn * L(S_dyn, x') + w_prior * L(S_prior, x')`` over the whole album, where
``S_prior`` is a LoRA pre-fine-tuned on the clean photos (cached on disk) and ``S_dyn`` a LoRA
fine-tuned between PGD rounds on the current protected photos. The perturbation lives at each
photo's full resolution; the surrogates see the DreamBooth resize/center-crop of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.errors import DeviceError
from dladiff_app.core.presets import ProtectionSettings
from dladiff_app.engine.device import DeviceInfo
from dladiff_app.engine.shield import pgd
from dladiff_app.engine.shield import surrogate as sg
from dladiff_app.engine.shield.prior_cache import PriorCache, prior_cache_key
from dladiff_app.engine.shield.resize import to_working

Progress = Callable[[str, int, int], None]
DYN, PRIOR = "dyn", "prior"


@dataclass
class Layer1Stats:
    """Measured curves of one run (losses are album means, fp32 floats)."""

    dual_loss_per_round: list[float] = field(default_factory=list)
    pgd_loss: list[float] = field(default_factory=list)
    lora_loss: list[float] = field(default_factory=list)
    prior_loss: list[float] = field(default_factory=list)
    working_size: int = 0
    micro_batch: int = 0
    gradient_checkpointing: bool = False
    seconds: float = 0.0
    pgd_seconds: float = 0.0  # wall time spent in PGD steps (album-wide), for time estimates


@dataclass
class Layer1Result:
    """``protected``: one (3, H_i, W_i) fp32 RGB tensor in [0, 1] per input photo (CPU, not yet
    quantised), within eps/255 of it. ``lora_states``: the final ``"dyn"``/``"prior"`` adapter
    weights (for evaluation and diagnosis)."""

    protected: list[torch.Tensor]
    prior_cache_hit: bool
    stats: Layer1Stats
    lora_states: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    surrogates: Layer1Surrogates | None = None  # only with ``keep_surrogates=True``


@dataclass
class Layer1Surrogates:
    """What layer 1 had loaded at its end (the SD base with its final ``"dyn"`` and ``"prior"``
    adapters, the working size, the loss weights), kept so a joint polish can evaluate the same
    dual loss per photo without loading Stable Diffusion again. Holds the whole UNet/VAE in
    memory: drop the object to free it."""

    sur: sg.Surrogate
    working_size: int
    weights: tuple[float, float]

    def dual_loss(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``w_dyn * L(S_dyn, x) + w_prior * L(S_prior, x)`` for ONE photo: the quantity layer 1
        maximises, with fresh noise/timestep draws from ``generator`` (CPU).

        ``x``: (3, H, W) or (1, 3, H, W) float32 RGB in [0, 1] at full resolution, on any
        device, may require grad. Returns a scalar fp32 tensor on the surrogate's device,
        differentiable with respect to ``x`` (through the DreamBooth resize/crop and the VAE).
        """
        sur, size = self.sur, self.working_size
        work = to_working(x.to(sur.device), size)
        if work.shape[0] != 1:
            raise ValueError(f"dual_loss takes one photo, got a batch of {work.shape[0]}")
        draw = sg.NoiseDraw.draw(sur, 1, size, generator)
        latents = sg.encode(sur, work, draw)
        w_dyn, w_prior = self.weights
        sg.use_adapter(sur, DYN)
        loss = w_dyn * sg.unet_loss(sur, latents, draw)
        sg.use_adapter(sur, PRIOR)
        return loss + w_prior * sg.unet_loss(sur, latents, draw)

    def fixed_dual_loss(self, x: torch.Tensor, seeds: tuple[int, ...] = (0, 1),
                        timesteps: tuple[int, ...] = (100, 500, 900)) -> float:
        """The dual loss of ``x`` ((3, H, W) or (1, 3, H, W) float32 RGB in [0, 1], any size:
        resized to the working size here) averaged over fixed (seed, timestep) draws, without
        gradient: an evaluation two versions of a photo can be compared with on equal terms."""
        values = []
        w_dyn, w_prior = self.weights
        with torch.no_grad():
            work = to_working(x.detach().to(self.sur.device), self.working_size)
            for seed in seeds:
                for t in timesteps:
                    gen = torch.Generator().manual_seed(seed)
                    draw = sg.NoiseDraw.draw(self.sur, 1, self.working_size, gen,
                                             torch.full((1,), t))
                    latents = sg.encode(self.sur, work, draw)
                    sg.use_adapter(self.sur, DYN)
                    loss = w_dyn * sg.unet_loss(self.sur, latents, draw)
                    sg.use_adapter(self.sur, PRIOR)
                    loss = loss + w_prior * sg.unet_loss(self.sur, latents, draw)
                    values.append(float(loss))
        return sum(values) / len(values)

    def time_step(self, generator: torch.Generator | None = None) -> float:
        """Seconds of one real layer-1 PGD step for one photo (forward + backward to the
        working-size pixels), measured now on the surrogate's device."""
        gen = generator or torch.Generator().manual_seed(0)
        x = torch.full((1, 3, self.working_size, self.working_size), 0.5,
                       device=self.sur.device, requires_grad=True)
        started = time.perf_counter()
        (grad,) = torch.autograd.grad(self.dual_loss(x, gen), x)
        float(grad.abs().sum())  # waits for an asynchronous device
        return time.perf_counter() - started


def _device_parts(device: DeviceInfo | str) -> tuple[torch.device, torch.dtype | None, str]:
    """(torch device, autocast dtype or None, display name) of a DeviceInfo or a plain device
    string (CUDA strings get bf16 where supported, else fp16)."""
    if isinstance(device, str):
        dev = torch.device(device)
        dtype: torch.dtype | None = None
        if dev.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return dev, dtype, str(dev)
    return torch.device(device.torch_device), device.autocast_dtype, device.name


def _check_images(images: list[torch.Tensor]) -> None:
    if not images:
        raise ValueError("layer 1 needs at least one photo")
    for i, img in enumerate(images):
        if img.dim() != 3 or img.shape[0] != 3 or not img.is_floating_point():
            raise ValueError(f"photo {i}: expected a (3, H, W) float RGB tensor, "
                             f"got {tuple(img.shape)} {img.dtype}")
        if float(img.min()) < 0.0 or float(img.max()) > 1.0:
            raise ValueError(f"photo {i}: values must be in [0, 1]")


class _Album:
    """Runs micro-batched work over the album and shrinks it when CUDA runs out of memory."""

    def __init__(self, sur: sg.Surrogate, n: int, micro_batch: int, device_name: str) -> None:
        self.sur, self.n, self.micro_batch = sur, n, micro_batch
        self.device_name = device_name
        self.checkpointing = False

    def chunks(self) -> list[list[int]]:
        return [list(range(i, min(i + self.micro_batch, self.n)))
                for i in range(0, self.n, self.micro_batch)]

    def retry(self, work: Callable[[], Any]) -> Any:
        while True:
            try:
                return work()
            except torch.cuda.OutOfMemoryError as err:
                self._shrink(err)

    def _shrink(self, err: BaseException) -> None:
        torch.cuda.empty_cache()
        if self.micro_batch > 1:
            self.micro_batch = max(1, self.micro_batch // 2)
        elif not self.checkpointing:
            # Recomputing activations trades time for the memory of the UNet/VAE activations.
            self.sur.unet.enable_gradient_checkpointing()
            self.sur.vae.enable_gradient_checkpointing()
            self.checkpointing = True
        else:
            raise DeviceError(
                f"{self.device_name} ran out of memory in the fine-tuning shield even with one "
                "photo at a time and gradient checkpointing. Close other programs using the GPU, "
                "choose a smaller working size, or run on the CPU."
            ) from err


def protect_album_layer1(
    images: list[torch.Tensor],
    pipeline_dir: Path,
    settings: ProtectionSettings,
    *,
    device: DeviceInfo | str = "cpu",
    working_size: int | None = None,
    cache_dir: Path | None = None,
    cancel: CancelToken | None = None,
    progress: Progress | None = None,
    micro_batch: int | None = None,
    lora_rank: int = 8,
    lora_lr: float = 1e-4,
    weights: tuple[float, float] = (1.0, 1.0),
    keep_surrogates: bool = False,
) -> Layer1Result:
    """Protect an album against DreamBooth/LoRA fine-tuning.

    ``images``: (3, H_i, W_i) float32 RGB in [0, 1], full resolution, sizes may differ.
    ``pipeline_dir``: a diffusers Stable Diffusion folder (loaded offline). ``device``: a
    DeviceInfo or a device string. ``working_size``: the surrogate resolution (None: the
    pipeline's native one, 512 for SD 1.5). ``cache_dir``: where the prior LoRA is cached
    (None: no cache). ``progress(stage, step, total)`` runs after every step, stage one of
    ``"prior"``, ``"layer1_pgd"``, ``"layer1_lora"``; ``cancel.check()`` runs before every step
    (raises ``Cancelled``). ``weights``: (w_dyn, w_prior). Deterministic for ``settings.seed``
    on the CPU. Raises ``DeviceError`` when CUDA memory cannot be made to suffice.
    ``keep_surrogates``: also return the loaded surrogates (:class:`Layer1Surrogates`) for a
    joint polish; they keep Stable Diffusion in memory while the result is held.
    """
    _check_images(images)
    started = time.perf_counter()
    dev, autocast_dtype, dev_name = _device_parts(device)
    sur = sg.load_surrogate(Path(pipeline_dir), dev, autocast_dtype)
    size = int(working_size or sur.native_size)
    multiple = 2 ** (len(sur.vae.config.block_out_channels) - 1) \
        * 2 ** (len(sur.unet.config.block_out_channels) - 1)
    if size % multiple:
        raise ValueError(f"working size {size} must be a multiple of {multiple} for this model")
    eps, alpha = pgd.from_255(settings.eps), pgd.from_255(settings.step1)
    w_dyn, w_prior = weights
    n = len(images)
    album = _Album(sur, n, micro_batch or (min(n, 4) if dev.type == "cuda" else 1), dev_name)
    stats = Layer1Stats(working_size=size)
    seed = settings.seed
    gen_start, gen_pgd, gen_dyn, gen_prior, gen_refresh = (
        torch.Generator().manual_seed(seed + k) for k in range(5))

    def tick() -> None:
        if cancel is not None:
            cancel.check()

    def report(stage: str, step: int, total: int) -> None:
        if progress is not None:
            progress(stage, step, total)

    clean = [img.detach().to("cpu", torch.float32) for img in images]
    with torch.no_grad():
        clean_work = [to_working(x.to(dev), size).cpu() for x in clean]

    def batches(work: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.cat([work[i] for i in idx]) for idx in album.chunks()]

    # Adapters are added in a fixed order with fixed seeds, so a cached prior and a freshly
    # trained one lead to bit-identical runs.
    sg.add_lora(sur, PRIOR, rank=lora_rank, seed=seed + 10)
    sg.add_lora(sur, DYN, rank=lora_rank, seed=seed + 11)
    opt_dyn = sg.make_optimizer(sur, DYN, lora_lr)

    rounds, p_steps, f_steps = settings.layer1_rounds, settings.layer1_pgd_steps, \
        settings.layer1_lora_steps
    refresh_rounds = [k for k in range(1, rounds) if k % settings.prior_refresh_every == 0]
    cache = PriorCache(cache_dir) if cache_dir is not None else None
    key = prior_cache_key(clean, Path(pipeline_dir), {
        "prior_steps": settings.prior_steps, "seed": seed, "rank": lora_rank, "lr": lora_lr,
        "size": size, "prompt": sg.INSTANCE_PROMPT, "targets": sg.LORA_TARGETS,
        "dtype": str(autocast_dtype),
    })
    cached = cache.load(key) if cache is not None else None
    prior_total = (0 if cached is not None else settings.prior_steps) \
        + len(refresh_rounds) * f_steps
    prior_done = 0

    def train(name: str, opt: torch.optim.Optimizer, work: list[torch.Tensor],
              gen: torch.Generator) -> float:
        return float(album.retry(lambda: sg.lora_step(sur, name, opt, batches(work), gen, size)))

    if cached is not None:
        sg.load_lora_state(sur, PRIOR, cached)
    else:
        opt_prior = sg.make_optimizer(sur, PRIOR, lora_lr)
        for _ in range(settings.prior_steps):
            tick()
            stats.prior_loss.append(train(PRIOR, opt_prior, clean_work, gen_prior))
            prior_done += 1
            report("prior", prior_done, prior_total)
        if cache is not None:
            cache.save(key, sg.lora_state(sur, PRIOR))
    # Refreshes start a fresh optimiser so a cached prior (whose Adam moments are not kept)
    # gives exactly the run a freshly trained one gives.
    opt_refresh = sg.make_optimizer(sur, PRIOR, lora_lr)

    x_adv = [pgd.random_start(x, eps, gen_start) for x in clean]

    def dual_gradient() -> tuple[list[torch.Tensor], float]:
        grads: list[torch.Tensor] = [torch.zeros_like(x) for x in x_adv]
        loss_sum = 0.0
        for idx in album.chunks():
            xs = [x_adv[i].to(dev).requires_grad_(True) for i in idx]
            work = torch.cat([to_working(x, size) for x in xs])
            draw = sg.NoiseDraw.draw(sur, len(idx), size, gen_pgd)
            latents = sg.encode(sur, work, draw)
            sg.use_adapter(sur, DYN)
            loss = w_dyn * sg.unet_loss(sur, latents, draw)
            sg.use_adapter(sur, PRIOR)
            loss = loss + w_prior * sg.unet_loss(sur, latents, draw)
            for i, g in zip(idx, torch.autograd.grad(loss * (len(idx) / n), xs), strict=True):
                grads[i] = g.detach().to("cpu", torch.float32)
            loss_sum += float(loss.detach()) * len(idx)
        return grads, loss_sum / n

    pgd_done = lora_done = 0
    for k in range(1, rounds + 1):
        round_losses = []
        for _ in range(p_steps):
            tick()
            t_step = time.perf_counter()
            grads, loss_value = album.retry(dual_gradient)
            x_adv = [pgd.signed_step(x, g, c, alpha=alpha, eps=eps)
                     for x, g, c in zip(x_adv, grads, clean, strict=True)]
            stats.pgd_seconds += time.perf_counter() - t_step
            round_losses.append(loss_value)
            stats.pgd_loss.append(loss_value)
            pgd_done += 1
            report("layer1_pgd", pgd_done, rounds * p_steps)
        if round_losses:
            stats.dual_loss_per_round.append(sum(round_losses) / len(round_losses))
        if k == rounds:
            break  # a last S_dyn update could no longer change the photos
        with torch.no_grad():
            adv_work = [to_working(x.to(dev), size).cpu() for x in x_adv]
        for _ in range(f_steps):
            tick()
            stats.lora_loss.append(train(DYN, opt_dyn, adv_work, gen_dyn))
            lora_done += 1
            report("layer1_lora", lora_done, (rounds - 1) * f_steps)
        if k in refresh_rounds:
            for _ in range(f_steps):
                tick()
                stats.prior_loss.append(train(PRIOR, opt_refresh, clean_work, gen_refresh))
                prior_done += 1
                report("prior", prior_done, prior_total)

    stats.micro_batch = album.micro_batch
    stats.gradient_checkpointing = album.checkpointing
    stats.seconds = time.perf_counter() - started
    return Layer1Result(
        protected=[x.detach().cpu() for x in x_adv],
        prior_cache_hit=cached is not None,
        stats=stats,
        lora_states={DYN: sg.lora_state(sur, DYN), PRIOR: sg.lora_state(sur, PRIOR)},
        surrogates=Layer1Surrogates(sur, size, weights) if keep_surrogates else None,
    )
