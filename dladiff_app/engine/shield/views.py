"""The attacker's views of a photo: the DreamBooth/LoRA scripts' resize, random crop and flip.

diffusers' ``train_dreambooth_lora.py`` resizes the shorter side to the resolution and then
takes a *random* crop unless ``--center_crop`` is given, and the LoRA/SDXL scripts flip
horizontally at random (``--random_flip``). A perturbation optimised for the centre crop alone
sits on one alignment with the VAE's 8-pixel latent grid; a crop a few pixels off that grid or
mirrored meets it misaligned and keeps little of the effect. Layer 1 therefore averages its
loss over random views (expectation over transformation).

A :class:`View` is (top, left, flip) inside the resized photo; :func:`to_view` renders it with
the same differentiable resize as :func:`resize.to_working` (the centre view equals it exactly).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dladiff_app.engine.shield.resize import resize_shorter_side, working_geometry


@dataclass(frozen=True)
class View:
    """A crop of the resized photo at (top, left), mirrored left-right when ``flip``."""

    top: int
    left: int
    flip: bool = False


def centre_view(height: int, width: int, size: int) -> View:
    """The view a ``--center_crop`` script takes (what :func:`to_working` renders)."""
    _, _, top, left = working_geometry(height, width, size)
    return View(top, left, False)


def crop_range(height: int, width: int, size: int) -> tuple[int, int]:
    """(max top, max left) of a ``size`` crop of the photo resized to ``size`` on its shorter
    side: 0 along the shorter side, the overhang along the longer one."""
    new_h, new_w, _, _ = working_geometry(height, width, size)
    return new_h - size, new_w - size


def random_view(height: int, width: int, size: int, generator: torch.Generator,
                flips: bool = True) -> View:
    """A uniformly random crop offset (and a fair coin for the flip when ``flips``), drawn
    from ``generator`` (CPU) so a seed gives the same views on any device."""
    max_top, max_left = crop_range(height, width, size)
    top = int(torch.randint(0, max_top + 1, (1,), generator=generator))
    left = int(torch.randint(0, max_left + 1, (1,), generator=generator))
    flip = bool(torch.randint(0, 2, (1,), generator=generator)) if flips else False
    return View(top, left, flip)


def to_view(x: torch.Tensor, size: int, view: View) -> torch.Tensor:
    """``x`` (3, H, W) or (1, 3, H, W) float RGB [0, 1] at full resolution -> the (1, 3, size,
    size) crop of ``view``, differentiable, same dtype/device. Raises ValueError for an offset
    outside the resized photo."""
    batch = x.unsqueeze(0) if x.dim() == 3 else x
    h, w = int(batch.shape[-2]), int(batch.shape[-1])
    max_top, max_left = crop_range(h, w, size)
    if not (0 <= view.top <= max_top and 0 <= view.left <= max_left):
        raise ValueError(f"crop at ({view.top}, {view.left}) is outside the {h}x{w} photo "
                         f"resized for {size} px (offsets up to ({max_top}, {max_left}))")
    crop = resize_shorter_side(batch, size)[..., view.top: view.top + size,
                                            view.left: view.left + size]
    return crop.flip(-1) if view.flip else crop


@dataclass(frozen=True)
class ViewPolicy:
    """Which attacker views layer 1's PGD averages over (our choice; benchmarked in
    ``benchmarks/layer1_views.py``, table in ``benchmarks/results/layer1_views_cpu.md``).

    The default (centre crop, plain and mirrored every step) measured best on the tiny model:
    its effect on an independent attacker held at off-centre and mirrored crops and was
    larger everywhere on average than the centre crop alone, while random offsets spread 40
    steps too thin (weaker than the centre crop alone, on average).

    ``offsets``: random crop offsets (else the centre crop). ``flip_pairs``: every step sees
    each photo both plain and mirrored (two UNet passes per surrogate), so a flip costs no
    variance. ``prompts``: a random instance prompt per view (else the training prompt).
    ``centre_share``: the share of steps that use the centre crop even with ``offsets``."""

    offsets: bool = False
    flip_pairs: bool = True
    prompts: bool = False
    centre_share: float = 0.0

    def describe(self) -> str:
        """A few words for reports ("centre crop, plain and mirrored")."""
        where = "random crop offsets" if self.offsets else "centre crop"
        if self.offsets and self.centre_share > 0:
            where += f" ({self.centre_share:.0%} of steps at the centre)"
        return (where + (", plain and mirrored" if self.flip_pairs else "")
                + (", random instance prompts" if self.prompts else ""))

    def draw(self, height: int, width: int, size: int, generator: torch.Generator
             ) -> list[View]:
        """The views of one photo for one step (one, or a plain/mirrored pair)."""
        centre = centre_view(height, width, size)
        use_centre = not self.offsets or (
            self.centre_share > 0 and float(torch.rand((), generator=generator))
            < self.centre_share)
        base = centre if use_centre else random_view(height, width, size, generator,
                                                     flips=False)
        return [base, View(base.top, base.left, True)] if self.flip_pairs else [base]


CENTRE_ONLY = ViewPolicy(offsets=False, flip_pairs=False, prompts=False)
