"""dlib's 128-d face-recognition ResNet in PyTorch, and the differentiable dlib identity encoder.

The architecture is dlib's ``anet_type`` from ``dnn_face_recognition_ex.cpp``::

    loss_metric<fc_no_bias<128, avg_pool_everything<
        alevel0<alevel1<alevel2<alevel3<alevel4<
        max_pool<3,3,2,2, relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>>>>>>

with residual blocks ``relu(block(x) + x)`` and downsampling blocks
``relu(block(x) + avg_pool<2,2,2,2>(x))``, ``block = affine(con3x3(relu(affine(con3x3/s(x)))))``.
dlib gives strided convolutions and pools no padding, so spatial sizes shrink unevenly
(150 -> 72 -> 35 -> 17 -> 8 -> 3|4 -> 1|2) and dlib's ``add_prev`` adds tensors of different
sizes by zero-padding the smaller one at the bottom/right and in the last channels: reproduced
here exactly, because otherwise the 4x4 and 2x2 stages would not match.

Each ``affine`` (dlib's inference form of batch norm) is folded into the convolution before it;
this is the same function up to float32 rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dladiff_app.core.errors import ModelIntegrityError
from dladiff_app.engine.faces.dlib_chip import CHIP_PADDING, CHIP_SIZE, extract_face_chip
from dladiff_app.engine.faces.dlib_dat import load_face_resnet_arrays
from dladiff_app.engine.faces.gradient_decay import decay
from dladiff_app.engine.faces.types import Face

# (channels, downsamples) per residual block, from the input side.
_BLOCKS: tuple[tuple[int, bool], ...] = (
    *((32, False),) * 3,
    (64, True), *((64, False),) * 3,
    (128, True), *((128, False),) * 2,
    (256, True), *((256, False),) * 2,
    (256, True),
)
# dlib's input layer: (pixel - mean) / 256 per channel (dlib/dnn/input.h).
_INPUT_SCALE = 256.0
_DEFAULT_MEAN = (122.782, 117.001, 104.298)


def _padded_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``tt::add`` for tensors of different shapes: the result has the larger size in
    every dimension and a missing element counts as zero (aligned at index 0)."""
    c = max(a.shape[1], b.shape[1])
    h = max(a.shape[2], b.shape[2])
    w = max(a.shape[3], b.shape[3])

    def grow(t: torch.Tensor) -> torch.Tensor:
        pads = (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1])
        return F.pad(t, pads) if any(pads) else t

    return grow(a) + grow(b)


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, down: bool) -> None:
        super().__init__()
        stride, pad = (2, 0) if down else (1, 1)
        self.down = down
        self.conv_a = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=pad)
        self.conv_b = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_b(decay(F.relu(self.conv_a(x))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_padded_add(y, shortcut))


class DlibResNet(nn.Module):
    """dlib's face-recognition ResNet (29 convolutions, 128-d output, not L2-normalised).

    ``forward(chips)``: ``chips`` (N, 3, 150, 150) float32 RGB with values 0-255 (dlib's aligned
    face chips, see :mod:`dlib_chip`); returns (N, 128) float32 descriptors. Two faces are the
    same person for dlib when the Euclidean distance of their descriptors is below 0.6.
    Built with random weights; :meth:`from_dat` loads dlib's trained file.
    """

    mean: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(_DEFAULT_MEAN, dtype=torch.float32))
        self.stem = nn.Conv2d(3, 32, 7, stride=2, padding=0)
        blocks = []
        c_in = 32
        for c_out, down in _BLOCKS:
            blocks.append(_Block(c_in, c_out, down))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(256, 128, bias=False)

    def convs(self) -> list[nn.Conv2d]:
        """The convolutions in forward order (the order of dlib's file)."""
        out = [self.stem]
        for block in self.blocks:
            assert isinstance(block, _Block)
            out += [block.conv_a, block.conv_b]
        return out

    @torch.no_grad()
    def load_arrays(self, arrays: dict[str, np.ndarray], source: str = "dlib model") -> None:
        """Load :func:`load_face_resnet_arrays` output, folding each affine into its conv."""
        for i, conv in enumerate(self.convs()):
            try:
                weight = torch.from_numpy(arrays[f"conv{i}.weight"])
                bias = torch.from_numpy(arrays[f"conv{i}.bias"])
                gamma = torch.from_numpy(arrays[f"affine{i}.gamma"])
                beta = torch.from_numpy(arrays[f"affine{i}.beta"])
            except KeyError as err:
                raise ModelIntegrityError(f"{source}: missing parameter {err}.") from None
            if weight.shape != conv.weight.shape or gamma.shape != (weight.shape[0],):
                raise ModelIntegrityError(
                    f"{source}: convolution {i} has shape {tuple(weight.shape)}, expected "
                    f"{tuple(conv.weight.shape)}: not dlib's face ResNet."
                )
            conv.weight.copy_(weight * gamma.view(-1, 1, 1, 1))
            assert conv.bias is not None
            conv.bias.copy_(bias * gamma + beta)
        fc = torch.from_numpy(arrays["fc.weight"])
        if fc.shape != self.fc.weight.shape:
            raise ModelIntegrityError(
                f"{source}: fc has shape {tuple(fc.shape)}, expected (128, 256)."
            )
        self.fc.weight.copy_(fc)
        self.mean.copy_(torch.from_numpy(arrays["input.mean"]))

    @classmethod
    def from_dat(cls, path: Path | str) -> DlibResNet:
        """Load ``dlib_face_recognition_resnet_model_v1.dat``; eval mode, weights frozen."""
        net = cls()
        net.load_arrays(load_face_resnet_arrays(path), source=Path(path).name)
        net.eval()
        net.requires_grad_(False)
        return net

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        x = (chips - self.mean.view(1, 3, 1, 1)) / _INPUT_SCALE
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))


class DlibEncoder(nn.Module):
    """The offline dlib identity encoder (``IdentityEncoder``): name "dlib", Euclidean metric,
    same person below 0.6.

    ``embed(image, face)``: ``image`` (1, 3, H, W) float32 RGB in [0, 1] at full resolution (may
    require grad); ``face.dlib_shape`` (68 or 5 dlib landmarks, full-resolution pixel coords)
    places the chip exactly as ``dlib.face_recognition_model_v1.compute_face_descriptor(img,
    shape)`` does (150x150, padding 0.25, dlib's pyramid + bilinear extraction, 8-bit rounding
    with a straight-through gradient). Returns the (128,) descriptor, differentiable w.r.t.
    ``image``.
    """

    name = "dlib"
    metric = "euclidean"
    threshold = 0.6

    def __init__(self, net: DlibResNet) -> None:
        super().__init__()
        self.net = net

    @classmethod
    def load(cls, path: Path | str | None = None) -> DlibEncoder:
        """Load the ResNet from ``path`` or from the installed offline pack."""
        if path is None:
            from dladiff_app.engine.models.dlib_pack import find_dlib_pack

            path = find_dlib_pack().recognition
        return cls(DlibResNet.from_dat(path))

    def chip(self, image: torch.Tensor, face: Face) -> torch.Tensor:
        """The (1, 3, 150, 150) 0-255 chip dlib would extract for ``face``."""
        if face.dlib_shape is None:
            raise ValueError(
                "DlibEncoder needs dlib landmarks (Face.dlib_shape): use DlibDetector or "
                "dlib_shape_for_box to add them."
            )
        return extract_face_chip(image, face.dlib_shape, size=CHIP_SIZE, padding=CHIP_PADDING)

    def embed(self, image: torch.Tensor, face: Face, flip: bool = False) -> torch.Tensor:
        """``image``: (1, 3, H, W) float32 RGB in [0, 1], may require grad; ``face`` must carry
        dlib's 68 landmarks. Returns the (128,) descriptor (not normalised), differentiable
        with respect to ``image``; ``flip`` mirrors the chip first."""
        chip = self.chip(image, face)
        return self.net(chip.flip(-1) if flip else chip)[0]
