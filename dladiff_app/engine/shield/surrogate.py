"""Stable Diffusion surrogates for the fine-tuning shield: one frozen base, LoRA adapters on it.

The attacker fine-tunes Stable Diffusion on the photos; we stand in for that attacker with LoRA
adapters (peft, rank 8 on the UNet attention projections) on ONE shared base UNet. Several
adapters (``"dyn"``, ``"prior"``, an attacker's ``"attack"``) live side by side and are switched
with ``set_adapter``, so two surrogates cost one UNet of memory.

Precision: the LoRA weights are always fp32. On CUDA the frozen base is loaded in the device's
autocast dtype (bf16/fp16) and runs under autocast; elsewhere everything is fp32.

Image contract: ``images`` are (N, 3, S, S) float RGB in [0, 1] at the working size S (see
``resize.to_working``); they are mapped to [-1, 1] before the VAE, as the diffusers training
scripts do.

Nothing here synchronises the device: losses come back as device tensors, so a caller that
runs many steps reads them once (a ``float()`` per step would stall a GPU's queue every step).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dladiff_app.engine.device import to_device
from dladiff_app.engine.models.loaders import load_sd_pipeline

INSTANCE_PROMPT = "a photo of sks person"
# The instance prompts attackers use differ in the rare identifier word and the wording; layer
# 1's PGD averages over these (EOT) so the perturbation does not hang on one text embedding. The
# surrogates themselves are trained on the first one, the DreamBooth default.
INSTANCE_PROMPTS = (INSTANCE_PROMPT, "a photo of ohwx person", "a close-up photo of sks person")
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass
class Surrogate:
    """A loaded SD pipeline's training parts: VAE, UNet (with LoRA adapters), the instance
    prompts' text embeddings (P, L, D) (row 0: :data:`INSTANCE_PROMPT`), the noise scheduler,
    and the device/dtype to run on."""

    vae: Any
    unet: Any
    text_embeddings: torch.Tensor
    scheduler: Any
    device: torch.device
    autocast_dtype: torch.dtype | None
    adapters: list[str] = field(default_factory=list)

    @property
    def text_embedding(self) -> torch.Tensor:
        """(1, L, D): the embedding of the training prompt (:data:`INSTANCE_PROMPT`)."""
        return self.text_embeddings[:1]

    @property
    def fp16(self) -> bool:
        """True when the base runs in float16 (not bfloat16): gradients need loss scaling."""
        return self.autocast_dtype == torch.float16

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler.config.prediction_type)

    @property
    def native_size(self) -> int:
        """The pipeline's native resolution: UNet sample size x VAE downscale (512 for SD 1.5)."""
        vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(self.unet.config.sample_size) * vae_scale

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def load_surrogate(
    pipeline_dir: Path,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    prompts: tuple[str, ...] = INSTANCE_PROMPTS,
) -> Surrogate:
    """Load ``pipeline_dir`` (a diffusers SD folder or single checkpoint, any weight variant)
    as a frozen surrogate base on ``device``.

    ``autocast_dtype`` (CUDA only: bf16/fp16) is the dtype of the frozen base weights; None means
    fp32 everywhere. The text encoder runs once for ``prompts`` and is then dropped.
    """
    from diffusers import DDPMScheduler

    dev = torch.device(device)
    half = autocast_dtype if dev.type == "cuda" else None
    pipe: Any = load_sd_pipeline(Path(pipeline_dir), device=str(dev), dtype=half or torch.float32)
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    ids = tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    ).input_ids.to(dev)
    with torch.no_grad():
        text_embeddings = text_encoder(ids)[0].detach()
    # Training noise follows the DDPM schedule the model was trained with, whatever sampler the
    # folder names (the attacker's training script does the same).
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    for module in (pipe.vae, pipe.unet):
        module.requires_grad_(False)
        module.eval()
    return Surrogate(
        vae=pipe.vae, unet=pipe.unet, text_embeddings=text_embeddings, scheduler=scheduler,
        device=dev, autocast_dtype=half,
    )


def add_lora(sur: Surrogate, name: str, *, rank: int = 8, seed: int = 0) -> None:
    """Add a fresh fp32 LoRA adapter ``name`` (rank ``rank``, alpha = rank) on the UNet attention
    projections. Its initial weights depend only on ``seed`` (global RNG state is restored)."""
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                        target_modules=list(LORA_TARGETS))
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # peft warns that a second adapter joins the first: that is the point here.
        warnings.filterwarnings("ignore", message=".*multiple adapters.*")
        torch.manual_seed(seed)
        sur.unet.add_adapter(config, adapter_name=name)
    for param in lora_parameters(sur, name):
        param.data = param.data.float()
    sur.adapters.append(name)
    use_adapter(sur, name)


def remove_adapters(sur: Surrogate) -> None:
    """Delete every LoRA adapter, leaving the frozen base as loaded (for the next album)."""
    if sur.adapters:
        with warnings.catch_warnings():
            # peft says which adapter becomes active as each goes: none is left afterwards.
            warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
            sur.unet.delete_adapters(list(sur.adapters))
        sur.adapters.clear()


def use_adapter(sur: Surrogate, name: str) -> None:
    """Make ``name`` the active adapter (only its LoRA weights then affect the UNet)."""
    sur.unet.set_adapter(name)


def lora_parameters(sur: Surrogate, name: str) -> list[torch.nn.Parameter]:
    marker = f".{name}."
    return [p for n, p in sur.unet.named_parameters() if "lora_" in n and marker in n]


def lora_state(sur: Surrogate, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s weights as CPU fp32 tensors, keyed independently of the adapter name."""
    marker = f".{name}."
    return {
        n.replace(marker, ".{adapter}."): p.detach().float().cpu().clone()
        for n, p in sur.unet.named_parameters() if "lora_" in n and marker in n
    }


def load_lora_state(sur: Surrogate, name: str, state: dict[str, torch.Tensor]) -> None:
    """Copy weights saved by :func:`lora_state` into the existing adapter ``name``."""
    marker = f".{name}."
    params = {n.replace(marker, ".{adapter}."): p for n, p in sur.unet.named_parameters()
              if "lora_" in n and marker in n}
    if params.keys() != state.keys():
        raise ValueError(f"LoRA weights do not fit adapter {name!r} of this UNet "
                         f"({len(state)} tensors given, {len(params)} expected)")
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(state[key].to(param.device, param.dtype))


@dataclass(frozen=True)
class NoiseDraw:
    """The random parts of one loss evaluation: the VAE latent sample eps, the diffusion noise
    and the timesteps, for N images, and which instance prompt (row of
    ``Surrogate.text_embeddings``) each image is conditioned on. Drawn from a CPU generator,
    so seeds reproduce on any device, and handed to the surrogate's device at once through
    pinned memory without blocking (a plain copy would wait for the GPU's queue every step)."""

    latent_eps: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    prompts: torch.Tensor | None = None  # (N,) long; None: the training prompt for all

    @staticmethod
    def draw(sur: Surrogate, n: int, size: int, generator: torch.Generator,
             timesteps: torch.Tensor | None = None, prompts: torch.Tensor | None = None
             ) -> NoiseDraw:
        """Draw for ``n`` images at working size ``size``; ``timesteps`` (n,) fixes t;
        ``prompts`` (n,) picks the instance prompt per image (default: the training one)."""
        lat = size // (2 ** (len(sur.vae.config.block_out_channels) - 1))
        shape = (n, int(sur.unet.config.in_channels), lat, lat)
        latent_eps = torch.randn(shape, generator=generator)
        noise = torch.randn(shape, generator=generator)
        if timesteps is None:
            steps = int(sur.scheduler.config.num_train_timesteps)
            timesteps = torch.randint(0, steps, (n,), generator=generator)
        dev = sur.device
        return NoiseDraw(to_device(latent_eps, dev), to_device(noise, dev),
                         to_device(timesteps.long(), dev),
                         None if prompts is None else to_device(prompts.long(), dev))


@dataclass(frozen=True)
class LatentMoments:
    """The VAE's latent distribution of N fixed working-size images: mean and std, each
    (N, 4, S/8, S/8) fp32 on the surrogate's device. Encoding an image that does not change
    (the clean photos of the prior surrogate, the protected photos during one round's S_dyn
    steps) once and sampling from these moments gives the latents a fresh encode would."""

    mean: torch.Tensor
    std: torch.Tensor

    def __len__(self) -> int:
        return int(self.mean.shape[0])


def moments(sur: Surrogate, images: torch.Tensor) -> LatentMoments:
    """:class:`LatentMoments` of ``images`` (N, 3, S, S) in [0, 1] (no gradient)."""
    with torch.no_grad(), sur.autocast():
        dist = sur.vae.encode(images.to(sur.device) * 2.0 - 1.0).latent_dist
    return LatentMoments(dist.mean.float(), dist.std.float())


def sample(sur: Surrogate, m: LatentMoments, draw: NoiseDraw) -> torch.Tensor:
    """Latents (N, 4, S/8, S/8) sampled from ``m`` with the eps of ``draw``, times the VAE
    scaling factor (what :func:`encode` returns for the same images)."""
    latents = m.mean + m.std * draw.latent_eps.to(sur.device)
    return latents * float(sur.vae.config.scaling_factor)


def encode(sur: Surrogate, images: torch.Tensor, draw: NoiseDraw) -> torch.Tensor:
    """VAE latents (N, 4, S/8, S/8) of ``images`` (N, 3, S, S) in [0, 1]: a sample of the latent
    distribution (eps from ``draw``) times the VAE scaling factor. Differentiable."""
    with sur.autocast():
        dist = sur.vae.encode(images * 2.0 - 1.0).latent_dist
    return sample(sur, LatentMoments(dist.mean.float(), dist.std.float()), draw)


def predict(sur: Surrogate, latents: torch.Tensor, draw: NoiseDraw) -> torch.Tensor:
    """The active adapter's UNet prediction (N, 4, s, s) for ``latents`` noised with ``draw``
    (its noise, timesteps and prompts), in the compute dtype. Attention capture
    (``shield.attention``) reads the maps of this pass."""
    noise = draw.noise.to(sur.device)
    t = draw.timesteps.to(sur.device)
    noisy = sur.scheduler.add_noise(latents, noise, t)
    if draw.prompts is None:
        cond = sur.text_embedding.expand(latents.shape[0], -1, -1)
    else:
        cond = sur.text_embeddings[draw.prompts.to(sur.device)]
    with sur.autocast():
        return sur.unet(noisy, t, encoder_hidden_states=cond).sample  # type: ignore[no-any-return]


def unet_loss(sur: Surrogate, latents: torch.Tensor, draw: NoiseDraw,
              reduce: bool = True) -> torch.Tensor:
    """DreamBooth denoising loss of the active adapter on ``latents``: MSE between the UNet's
    prediction and the target (noise for epsilon models, velocity for v_prediction models).
    Scalar if ``reduce``, else (N,) per-image losses. fp32."""
    noise = draw.noise.to(sur.device)
    t = draw.timesteps.to(sur.device)
    if sur.prediction_type == "v_prediction":
        target = sur.scheduler.get_velocity(latents, noise, t)
    elif sur.prediction_type == "epsilon":
        target = noise
    else:
        raise ValueError(f"unsupported prediction_type {sur.prediction_type!r}")
    pred = predict(sur, latents, draw)
    per_image = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return per_image.mean() if reduce else per_image


def lora_step_cached(sur: Surrogate, name: str, optimizer: torch.optim.Optimizer,
                     batches: list[LatentMoments], generator: torch.Generator, size: int,
                     scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """One optimiser step of adapter ``name`` on cached latent moments of working-size image
    micro-batches (gradient accumulated, each weighted by its share of the images).

    ``scaler``: a GradScaler for fp16 bases (the fp32 LoRA gradients pass through fp16
    activations and would underflow); None or disabled: a plain step. Returns the mean loss
    as a 0-d fp32 device tensor (no synchronisation)."""
    use_adapter(sur, name)
    optimizer.zero_grad(set_to_none=True)
    total = sum(len(m) for m in batches)
    loss_sum = torch.zeros((), device=sur.device)
    for m in batches:
        draw = NoiseDraw.draw(sur, len(m), size, generator)
        loss = unet_loss(sur, sample(sur, m, draw), draw)
        weighted = loss * (len(m) / total)
        (scaler.scale(weighted) if scaler is not None else weighted).backward()
        loss_sum = loss_sum + loss.detach() * len(m)
    if scaler is not None:
        scaler.step(optimizer)  # skips the step (and lowers the scale) on inf/nan gradients
        scaler.update()
    else:
        optimizer.step()
    return loss_sum / total


def make_optimizer(sur: Surrogate, name: str, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(lora_parameters(sur, name), lr=lr, weight_decay=1e-2)
