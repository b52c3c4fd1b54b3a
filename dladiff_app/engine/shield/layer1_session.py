"""Layer 1 as one kit runs it: Stable Diffusion loaded once and kept warm across albums and
jobs, the album's surrogates handed on to the polish, and the measured cost of a step.

The runner calls :meth:`Layer1Session.protect_album` once per album and :meth:`polish` per
photo after layer 2. The base UNet/VAE stay loaded on the kit's device for the kit's life
(``EngineProtectService`` keeps one kit warm); every album gets fresh LoRA adapters on it.
A working size lowered by an out-of-memory step-down is kept for the next albums, so one
shortage is not paid for again.

No torch at import time (the kit is built before the ML stack loads).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dladiff_app.core.cancel import CancelToken
from dladiff_app.core.presets import ProtectionSettings

if TYPE_CHECKING:
    import torch

    from dladiff_app.engine.device import DeviceInfo
    from dladiff_app.engine.faces.types import Face, IdentityEncoder
    from dladiff_app.engine.runner import Layer1Output, StepFn
    from dladiff_app.engine.shield.layer1 import Layer1Stats, Layer1Surrogates
    from dladiff_app.engine.shield.surrogate import Surrogate


class WarmBase:
    """The frozen SD base of one pipeline on one device, loaded on first use and then kept:
    shared by every kit a service builds for that pipeline and device, so a new job (another
    preset, another album) does not load Stable Diffusion again. ``loads`` counts real loads."""

    def __init__(self, pipeline_dir: Path, device: DeviceInfo) -> None:
        self.pipeline_dir = Path(pipeline_dir)
        self.device = device
        self.loads = 0
        self._base: Surrogate | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (str(self.pipeline_dir), self.device.torch_device, str(self.device.autocast_dtype))

    def get(self) -> Surrogate:
        if self._base is None:
            from dladiff_app.engine.shield.surrogate import load_surrogate

            self._base = load_surrogate(self.pipeline_dir, self.device.torch_device,
                                        self.device.autocast_dtype)
            self.loads += 1
        return self._base


class Layer1Session:
    """One kit's fine-tuning shield on ``device`` with the pipeline at ``pipeline_dir``.

    ``keep_surrogates``: keep the album's adapters for the polish (the base stays loaded in
    any case). ``warm``: a base shared with other kits (default: this session's own).
    ``micro_batch``: photos per pass (default: layer 1's choice for the device)."""

    def __init__(self, pipeline_dir: Path, settings: ProtectionSettings, device: DeviceInfo,
                 *, working_size: int | None = None, cache_dir: Path | None = None,
                 keep_surrogates: bool = False, warm: WarmBase | None = None,
                 micro_batch: int | None = None) -> None:
        self.pipeline_dir = Path(pipeline_dir)
        self.settings = settings
        self.device = device
        self.working_size = working_size
        self.cache_dir = cache_dir
        self.keep_surrogates = keep_surrogates
        self.micro_batch = micro_batch  # photos per pass (None: layer 1's default per device)
        self.warm = warm if warm is not None else WarmBase(self.pipeline_dir, device)
        self.surrogates: Layer1Surrogates | None = None  # the current album's, for the polish
        self.pgd_step_s: float | None = None
        self.last_stats: Layer1Stats | None = None  # of the last album (benchmarks read it)

    def base(self) -> Surrogate:
        """The frozen SD base on the kit's device (loaded once, see :class:`WarmBase`)."""
        return self.warm.get()

    def protect_album(self, images: list[torch.Tensor], cancel: CancelToken, step: StepFn
                      ) -> Layer1Output:
        """The runner's layer 1 (``Layer1Fn``): protect one album on the warm base."""
        from dladiff_app.engine.runner import Layer1Output
        from dladiff_app.engine.shield.layer1 import protect_album_layer1

        self.surrogates = None  # the previous album's adapters are replaced now
        res = protect_album_layer1(
            images, self.pipeline_dir, self.settings, device=self.device,
            working_size=self.working_size, cache_dir=self.cache_dir, cancel=cancel,
            progress=step, keep_surrogates=self.keep_surrogates, surrogate=self.base(),
            micro_batch=self.micro_batch)
        st = self.last_stats = res.stats
        if st.step_downs:
            self.working_size = st.working_size
        self.surrogates = res.surrogates
        if self.settings.layer1_total_pgd:
            self.pgd_step_s = st.pgd_seconds / self.settings.layer1_total_pgd / len(images)
        note = (f"{len(images)} photo(s) at {st.working_size} px"
                + (f" ({st.attacker_views})" if st.attacker_views else "")
                + f"; budget {self.settings.finetune_eps:g}/255; {st.summary()}"
                + ("; static surrogate reused from cache" if res.prior_cache_hit else ""))
        return Layer1Output(res.protected, note, tuple(st.step_downs),
                            record=st.record(self.settings))

    def polish(self, encoders: Sequence[IdentityEncoder], settings: ProtectionSettings,
               prepare_faces: Any) -> Any:
        """The runner's polish (``PolishFn``): joint steps on both layers' losses with the
        surrogates layer 1 left for this album (``shield.polish``). ``prepare_faces(pixels,
        faces)`` completes the detections for the encoders (dlib landmarks)."""
        from dladiff_app.engine.shield.polish import polish_photo

        def run(clean: torch.Tensor, current: torch.Tensor, faces: list[Face],
                cancel: CancelToken, step: StepFn) -> tuple[torch.Tensor, str]:
            if self.surrogates is None:
                return current, "skipped: the fine-tuning surrogates were not kept"
            faces = prepare_faces(clean[0].permute(1, 2, 0).numpy(), faces)
            step("polish", 0, settings.polish_steps)
            res = polish_photo(clean, current, faces, encoders, self.surrogates, settings,
                               cancel=cancel, progress=lambda i, n: step("polish", i, n))
            return res.protected, (f"{res.steps_done} joint steps; identity loss "
                                   f"{res.identity_before:.3f} -> {res.identity_after:.3f}; "
                                   f"surrogate loss {res.dual_first:.4f} -> "
                                   f"{res.dual_last:.4f}")
        return run

    def step_seconds(self) -> float | None:
        """Seconds of one layer-1 PGD step for one photo: measured during the last album, or
        timed now on the surrogates still loaded; None before layer 1 has run."""
        if self.pgd_step_s is None and self.surrogates is not None:
            self.pgd_step_s = self.surrogates.time_step()
        return self.pgd_step_s
