"""Layer 1, the fine-tuning shield: the paper's Algorithm 1 (DSUR + ADFT, METHOD.md).

Two LoRA surrogates on one frozen SD base: the static one (``"prior"``), trained once on the
clean photos (cached on disk), and the dynamic one (``"dyn"``), fresh per album. Each epoch:
(1) ``iter1`` PGD ascent steps on the attention-map loss ``L_att`` (static surrogate on the
clean photo vs dynamic one on the protected photo, same view, timestep and noise), (2)
``iter2`` PGD ascent steps on the dynamic surrogate's denoising loss, (3) ``iter3`` fine-tuning
steps of the dynamic surrogate on the protected photos (none after the last epoch). The
``"dual"`` objective replaces stage 1's loss by the dual denoising loss of an earlier design.

The perturbation lives at each photo's full resolution, inside ``settings.finetune_eps``; the
surrogates see the DreamBooth resize/crop of it: with ``settings.eot`` the views of
``shield.views.ViewPolicy`` (default: the centre crop, plain and mirrored; random crop offsets
and instance prompts on request), else the centre crop and the training prompt.

Device residency: the photos, their perturbations and the surrogates stay on the run's device
(the photos fall back to host memory only when the album is too large for it); losses are read
once per stage, so the inner loops never wait for the device. Out-of-memory errors step down
(``shield.memory``); fp16 bases get loss scaling (``shield.precision``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.presets import ProtectionSettings
from dladiff_app.engine.device import DeviceInfo, autocast_dtype_for
from dladiff_app.engine.shield import pgd
from dladiff_app.engine.shield import surrogate as sg
from dladiff_app.engine.shield.driver import Ball, Constant, Driver, Phase, PhaseResult
from dladiff_app.engine.shield.dual import DYN, PRIOR, dual_loss
from dladiff_app.engine.shield.dual_term import attention_term, denoise_term, dual_term
from dladiff_app.engine.shield.memory import StepDown, size_multiple
from dladiff_app.engine.shield.memory_plan import free_bytes, plan_layer1
from dladiff_app.engine.shield.precision import grad_scaler_for, pixel_scale_for
from dladiff_app.engine.shield.prior_cache import PriorCache, prior_cache_key
from dladiff_app.engine.shield.resize import to_working
from dladiff_app.engine.shield.views import CENTRE_ONLY, ViewPolicy

Progress = Callable[[str, int, int], None]
__all__ = ["DYN", "PRIOR", "EpochStats", "Layer1Result", "Layer1Stats", "Layer1Surrogates",
           "protect_album_layer1"]


@dataclass
class EpochStats:
    """One ADFT epoch's album-mean losses, each averaged over the stage's steps (None: the
    stage ran no step). ``objective``: stage 1's loss (``L_att`` with the attention
    objective); ``denoise``: S_dyn's denoising loss on the protected photos (stage 2, PGD
    raises it); ``finetune``: S_dyn's fine-tuning loss on them (stage 3, training lowers it)."""

    epoch: int
    objective: float | None = None
    denoise: float | None = None
    finetune: float | None = None

    def to_dict(self, objective_name: str) -> dict[str, object]:
        return {"epoch": self.epoch, "l_att" if objective_name == "attention" else "dual":
                self.objective, "dyn_denoise": self.denoise, "dyn_finetune": self.finetune}


@dataclass
class Layer1Stats:
    """Measured curves of one run (losses are album means, fp32 floats)."""

    objective: str = "attention"  # stage 1's loss (ProtectionSettings.layer1_objective)
    epochs: list[EpochStats] = field(default_factory=list)
    pgd_loss: list[float] = field(default_factory=list)  # stage 1, every step
    denoise_loss: list[float] = field(default_factory=list)  # stage 2, every step
    lora_loss: list[float] = field(default_factory=list)  # stage 3, every step
    prior_loss: list[float] = field(default_factory=list)
    working_size: int = 0
    micro_batch: int = 0
    gradient_checkpointing: bool = False
    step_downs: list[str] = field(default_factory=list)  # what an out-of-memory changed
    attacker_views: str = ""  # the attacker views PGD averaged over (ViewPolicy.describe)
    memory_plan: str = ""  # photos per pass and checkpointing as planned (memory_plan)
    seconds: float = 0.0
    # Wall time of the phases (album-wide; the device is waited for at the end of each):
    pgd_seconds: float = 0.0    # PGD steps of both stages, for time estimates
    lora_seconds: float = 0.0   # S_dyn steps
    prior_seconds: float = 0.0  # S_prior pre-training and refreshes

    def record(self, settings: ProtectionSettings) -> dict[str, object]:
        """The manifest's ``layer1`` section (schema ``$defs/layer1``): what ran and the
        per-epoch losses (see :class:`EpochStats`)."""
        return {"objective": self.objective, "eps_ft": settings.finetune_eps,
                "step": settings.step1, "iter1": settings.iter1, "iter2": settings.iter2,
                "iter3": settings.iter3, "working_size": self.working_size,
                "attacker_views": self.attacker_views,
                "epochs": [e.to_dict(self.objective) for e in self.epochs]}

    def summary(self) -> str:
        """One line: stage 1's and stage 2's loss from the first to the last epoch."""
        def span(values: list[float | None]) -> str:
            seen = [v for v in values if v is not None]
            return f"{seen[0]:.4g} -> {seen[-1]:.4g}" if seen else "not recorded"
        name = "L_att" if self.objective == "attention" else "dual loss"
        return (f"{name} {span([e.objective for e in self.epochs])}, dynamic surrogate's "
                f"denoising loss {span([e.denoise for e in self.epochs])} over "
                f"{len(self.epochs)} epochs")


@dataclass
class Layer1Result:
    """``protected``: one (3, H_i, W_i) fp32 RGB tensor in [0, 1] per input photo (CPU, not yet
    quantised), within finetune_eps/255 of it. ``lora_states``: the final ``"dyn"``/``"prior"`` adapter
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
        return dual_loss(sur, work, sg.NoiseDraw.draw(sur, 1, size, generator), self.weights)

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
    string (CUDA strings get bf16 where the card has it natively, else fp16)."""
    if isinstance(device, str):
        dev = torch.device(device)
        return dev, autocast_dtype_for(dev), str(dev)
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


def photos_home(dev: torch.device, images: list[torch.Tensor]) -> torch.device:
    """Where the album's full-resolution tensors live during PGD: the run's device when the
    clean photos, their protected copies and one gradient each (3 x fp32) take at most a
    sixth of its memory, else host memory (a copy per step then crosses the bus)."""
    if dev.type == "cpu":
        return dev
    need = 3 * 4 * sum(int(img.numel()) for img in images)
    total: int | None = None
    if dev.type == "cuda":
        total = int(torch.cuda.get_device_properties(dev).total_memory)
    elif dev.type == "mps":
        recommended = getattr(getattr(torch, "mps", None), "recommended_max_memory", None)
        total = int(recommended()) if callable(recommended) else None
    return dev if total is not None and need * 6 <= total else torch.device("cpu")


class _Moments:
    """Latent moments of fixed working-size images, encoded once per image and size (the
    prior surrogate's clean photos for the whole run; the protected photos for one round)."""

    def __init__(self, sur: sg.Surrogate, images: list[torch.Tensor]) -> None:
        self.sur, self.images = sur, images
        self._size = -1
        self._per_image: list[sg.LatentMoments] = []

    def batches(self, size: int, chunks: list[list[int]]) -> list[sg.LatentMoments]:
        if size != self._size:  # first use, or a step-down shrank the working size
            self._per_image = []
            for img in self.images:
                self._per_image.append(sg.moments(self.sur, to_working(img.to(self.sur.device),
                                                                       size)))
            self._size = size
        return [sg.LatentMoments(torch.cat([self._per_image[i].mean for i in idx]),
                                 torch.cat([self._per_image[i].std for i in idx]))
                for idx in chunks]


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
    surrogate: sg.Surrogate | None = None,
    notify: Callable[[str], None] | None = None,
    views: ViewPolicy | None = None,
) -> Layer1Result:
    """Protect an album against DreamBooth/LoRA fine-tuning.

    ``images``: (3, H_i, W_i) float32 RGB in [0, 1], full resolution, sizes may differ, any
    device. ``pipeline_dir``: a diffusers Stable Diffusion folder or checkpoint (loaded
    offline, any weight variant). ``device``: a DeviceInfo or a device string.
    ``working_size``: the surrogate resolution (None: the pipeline's native one, 512 for SD
    1.5). ``cache_dir``: where the prior LoRA is cached (None: no cache).
    ``progress(stage, step, total)`` runs after every step, stage one of ``"prior"``,
    ``"layer1_pgd"``, ``"layer1_lora"``; ``cancel.check()`` runs before every step (raises
    ``Cancelled``). ``weights``: (w_dyn, w_prior) of the dual loss (the ``"dual"``
    objective and the polish). Deterministic for ``settings.seed`` on the CPU. ``surrogate``:
    a base already loaded from ``pipeline_dir`` on ``device`` (kept warm between albums; its
    adapters are replaced here). ``notify(text)``: told of every out-of-memory step-down as
    it happens. ``views``: the attacker views PGD averages over (default:
    :class:`ViewPolicy()` with ``settings.eot``, else the centre crop only). Raises
    ``DeviceError`` when the device's memory cannot be made to suffice. ``keep_surrogates``: also return the loaded surrogates
    (:class:`Layer1Surrogates`) for a joint polish; they keep Stable Diffusion in memory while
    the result is held.
    """
    _check_images(images)
    started = time.perf_counter()
    dev, autocast_dtype, dev_name = _device_parts(device)
    sur = surrogate if surrogate is not None else \
        sg.load_surrogate(Path(pipeline_dir), dev, autocast_dtype)
    sg.remove_adapters(sur)
    size = int(working_size or sur.native_size)
    if size % size_multiple(sur):
        raise ValueError(f"working size {size} must be a multiple of {size_multiple(sur)} for "
                         "this model")
    eps, alpha = pgd.from_255(settings.finetune_eps), pgd.from_255(settings.step1)
    n = len(images)
    policy = views if views is not None else (ViewPolicy() if settings.eot else CENTRE_ONLY)
    pixel_scale, scaler = pixel_scale_for(sur), grad_scaler_for(sur)
    seed = settings.seed
    gen_start, gen_pgd, gen_dyn, gen_prior, gen_refresh, gen_view = (
        torch.Generator().manual_seed(seed + k) for k in range(6))

    def report(stage: str, step: int, total: int) -> None:
        if progress is not None:
            progress(stage, step, total)

    home = photos_home(dev, images)
    clean = [img.detach().to(home, torch.float32) for img in images]
    clean_moments = _Moments(sur, clean)

    # Adapters are added in a fixed order with fixed seeds, so a cached prior and a freshly
    # trained one lead to bit-identical runs.
    sg.add_lora(sur, PRIOR, rank=lora_rank, seed=seed + 10)
    sg.add_lora(sur, DYN, rank=lora_rank, seed=seed + 11)
    opt_dyn = sg.make_optimizer(sur, DYN, lora_lr)
    # Photos per pass and checkpointing planned from the memory left once the album's clean
    # photos and both adapters are on the device, before the first step.
    plan = plan_layer1(free_bytes(dev), photos=n, views_per_photo=2 if policy.flip_pairs else 1,
                       size=size, element_bytes=2 if autocast_dtype else 4,
                       micro_batch=micro_batch)
    # Set either way: a warm surrogate shared across albums keeps what an earlier plan (or an
    # out-of-memory step-down) switched on.
    for module in (sur.unet, sur.vae):
        if plan.checkpointing:
            module.enable_gradient_checkpointing()
        else:
            module.disable_gradient_checkpointing()
    album = StepDown(sur, n, plan.micro_batch, size, dev_name, notify,
                     split_backward=plan.split_backward)
    objective = settings.layer1_objective
    stats = Layer1Stats(objective=objective, working_size=size,
                        attacker_views=policy.describe(), memory_plan=plan.describe())

    epochs, iter3 = settings.epochs, settings.iter3
    # The paper's static surrogate stays as trained; the old dual objective refreshed it.
    refresh_epochs = [k for k in range(1, epochs) if k % settings.prior_refresh_every == 0] \
        if objective == "dual" else []
    cache = PriorCache(cache_dir) if cache_dir is not None else None

    def cache_key(at_size: int) -> str:
        return prior_cache_key(clean, Path(pipeline_dir), {
            "prior_steps": settings.prior_steps, "seed": seed, "rank": lora_rank,
            "lr": lora_lr, "size": at_size, "prompt": sg.INSTANCE_PROMPT,
            "targets": sg.LORA_TARGETS, "dtype": str(autocast_dtype),
        })

    cached = cache.load(cache_key(size)) if cache is not None else None
    done = {"prior": 0, "layer1_lora": 0}
    totals = {"prior": (0 if cached is not None else settings.prior_steps)
              + len(refresh_epochs) * iter3, "layer1_lora": settings.layer1_total_lora}

    def lora_phase(stage: str, name: str, opt: torch.optim.Optimizer, fixed: _Moments,
                   gen: torch.Generator, steps: int) -> tuple[list[float], float]:
        """``steps`` updates of adapter ``name`` on the ``fixed`` images; returns the losses
        (read once, after the phase: the one host synchronisation) and the seconds taken."""
        losses = []
        t_phase = time.perf_counter()
        for _ in range(steps):
            if cancel is not None:
                cancel.check()
            losses.append(album.retry(lambda: sg.lora_step_cached(
                sur, name, opt, fixed.batches(album.size, album.chunks()), gen, album.size,
                scaler)))
            done[stage] += 1
            report(stage, done[stage], totals[stage])
        values = [float(v) for v in torch.stack(losses).tolist()] if losses else []
        return values, time.perf_counter() - t_phase

    def prior_phase(opt: torch.optim.Optimizer, gen: torch.Generator, steps: int) -> None:
        values, seconds = lora_phase("prior", PRIOR, opt, clean_moments, gen, steps)
        stats.prior_loss.extend(values)
        stats.prior_seconds += seconds

    if cached is not None:
        sg.load_lora_state(sur, PRIOR, cached)
    else:
        prior_phase(sg.make_optimizer(sur, PRIOR, lora_lr), gen_prior, settings.prior_steps)
        if cache is not None:
            cache.save(cache_key(album.size), sg.lora_state(sur, PRIOR))
    # Refreshes start a fresh optimiser so a cached prior (whose Adam moments are not kept)
    # gives exactly the run a freshly trained one gives.
    opt_refresh = sg.make_optimizer(sur, PRIOR, lora_lr)

    x_adv = [pgd.random_start(x, eps, gen_start) for x in clean]
    stage1 = attention_term(sur, album, clean, pixel_scale, gen_pgd, policy=policy,
                            view_gen=gen_view) if objective == "attention" else \
        dual_term(sur, album, weights, pixel_scale, gen_pgd, policy=policy, view_gen=gen_view)
    stage2 = denoise_term(sur, album, pixel_scale, gen_pgd, policy=policy, view_gen=gen_view)

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    def after_stage1(k: int, driver: Driver, result: PhaseResult) -> None:
        values = result.losses.get(stage1.name, [])
        stats.pgd_seconds += result.seconds
        stats.pgd_loss.extend(values)
        stats.epochs.append(EpochStats(k, objective=mean(values)))

    def after_stage2(k: int, driver: Driver, result: PhaseResult) -> None:
        """Stage 2's curve, then stage 3: S_dyn fine-tuned on the current protected photos
        (and, with the dual objective on refresh epochs, the static surrogate on the clean)."""
        values = result.losses.get(stage2.name, [])
        stats.pgd_seconds += result.seconds
        stats.denoise_loss.extend(values)
        stats.epochs[-1].denoise = mean(values)
        if k == epochs:
            return  # a last S_dyn update could no longer change the photos
        adv_moments = _Moments(sur, [x.detach() for x in driver.xs])
        values, seconds = lora_phase("layer1_lora", DYN, opt_dyn, adv_moments, gen_dyn, iter3)
        stats.lora_loss.extend(values)
        stats.epochs[-1].finetune = mean(values)
        stats.lora_seconds += seconds
        if k in refresh_epochs:
            prior_phase(opt_refresh, gen_refresh, iter3)

    # Algorithm 1 as a schedule: the two PGD stages (maximised, so their weights are negative:
    # the driver descends), stage 3 after the second.
    driver = Driver(x_adv, [Ball(c, eps) for c in clean], [stage1, stage2], Constant(alpha),
                    cancel=cancel, progress=partial(report, "layer1_pgd"))
    phases = []
    for k in range(1, epochs + 1):
        phases.append(Phase(settings.iter1, {stage1.name: -1.0},
                            after=partial(after_stage1, k)))
        phases.append(Phase(settings.iter2, {stage2.name: -1.0},
                            after=partial(after_stage2, k)))
    driver.run(phases)
    x_adv = driver.xs

    stats.working_size = album.size
    stats.micro_batch = album.micro_batch
    stats.gradient_checkpointing = album.checkpointing
    stats.step_downs = list(album.notes)
    stats.seconds = time.perf_counter() - started
    return Layer1Result(
        protected=[x.detach().to("cpu", torch.float32) for x in x_adv],
        prior_cache_hit=cached is not None,
        stats=stats,
        lora_states={DYN: sg.lora_state(sur, DYN), PRIOR: sg.lora_state(sur, PRIOR)},
        surrogates=Layer1Surrogates(sur, album.size, weights) if keep_surrogates else None,
    )
