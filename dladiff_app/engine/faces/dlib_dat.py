"""Reader for dlib's binary serialisation of its 128-d face-recognition ResNet.

``dlib_face_recognition_resnet_model_v1.dat`` is the ``anet_type`` network of dlib's
``dnn_face_recognition_ex.cpp`` written by ``dlib::serialize``. Facts about the format that this
reader relies on (dlib/serialize.h, dlib/dnn/{core,layers,input,loss,tensor}.h):

- integers: one control byte (low nibble = number of value bytes, bit 0x80 = negative) followed by
  that many little-endian bytes;
- floating point numbers: two such integers, a mantissa and a base-2 exponent;
- strings: an integer length, then the bytes; booleans: one ASCII byte ``'0'``/``'1'``;
- tensors: int version 2, four int64 dims (n, k, nr, nc), then raw little-endian float32;
  alias tensors: int version 1 and four dims, no data;
- a network is written outside-in: every wrapper writes its version and then its subnetwork, and
  only after the subnetwork returns does a computational layer write its own details. So the file
  holds a run of version numbers (2 = layer, 1 = tag/skip), the input layer, and then the layer
  details from the input side to the output side.

Nothing here executes anything from the file: it is parsed as data. Parameters come back as
float32 numpy arrays named after their position (see :func:`load_face_resnet_arrays`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dladiff_app.core.errors import ModelIntegrityError

# float_details marks non-finite values with these exponents (dlib/float_details.h).
_EXP_INF, _EXP_NINF, _EXP_NAN = 32000, 32001, 32002


class DlibFormatError(ModelIntegrityError):
    """The file is not (or no longer) the dlib network this reader understands."""


@dataclass
class DlibLayer:
    """One computational layer: ``kind`` is dlib's version tag without its suffix
    ("con", "affine", "relu", "max_pool", "avg_pool", "add_prev", "fc"); ``arrays`` holds its
    parameters (float32) and ``meta`` its integer/float settings."""

    kind: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, float] = field(default_factory=dict)


@dataclass
class DlibNet:
    """A parsed network: the input layer's settings, the loss settings and the layers from the
    input side to the output side."""

    input_kind: str
    input_meta: dict[str, float]
    loss_kind: str
    loss_meta: dict[str, float]
    layers: list[DlibLayer]
    structure: list[int]  # the wrapper versions, outermost first (2 = layer, 1 = tag/skip)


class _Reader:
    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.pos = 0
        self.source = source

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(
            f"{self.source}: not a dlib face-recognition network this app can read "
            f"({what} at byte {self.pos}); reinstall face_recognition_models."
        )

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise self.fail("unexpected end of file")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def integer(self) -> int:
        control = self.byte()
        size = control & 0x0F
        if size == 0 or size > 8:
            raise self.fail(f"bad integer control byte 0x{control:02x}")
        raw = self.data[self.pos : self.pos + size]
        if len(raw) != size:
            raise self.fail("unexpected end of file")
        self.pos += size
        value = int.from_bytes(raw, "little")
        return -value if control & 0x80 else value

    def real(self) -> float:
        mantissa = self.integer()
        exponent = self.integer()
        if exponent == _EXP_INF:
            return math.inf
        if exponent == _EXP_NINF:
            return -math.inf
        if exponent == _EXP_NAN:
            return math.nan
        return math.ldexp(float(mantissa), exponent)

    def string(self) -> str:
        length = self.integer()
        if length < 0 or self.pos + length > len(self.data):
            raise self.fail("bad string length")
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("latin-1")

    def boolean(self) -> bool:
        value = self.byte()
        if value not in (ord("0"), ord("1")):
            raise self.fail("bad boolean")
        return value == ord("1")

    def tensor(self) -> np.ndarray:
        version = self.integer()
        if version != 2:
            raise self.fail(f"unsupported tensor version {version}")
        dims = tuple(self.integer() for _ in range(4))
        count = int(np.prod(dims))
        end = self.pos + 4 * count
        if count < 0 or end > len(self.data):
            raise self.fail("tensor data runs past the end of the file")
        array = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos)
        self.pos = end
        return array.astype(np.float32).reshape(dims)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        version = self.integer()
        if version != 1:
            raise self.fail(f"unsupported alias tensor version {version}")
        n, k, nr, nc = (self.integer() for _ in range(4))
        return n, k, nr, nc

    def peek_string_prefix(self, prefix: str) -> bool:
        """True if a serialised string starting with ``prefix`` begins at the cursor."""
        saved = self.pos
        try:
            length = self.integer()
            if length < len(prefix) or self.pos + length > len(self.data):
                return False
            return self.data[self.pos : self.pos + len(prefix)] == prefix.encode()
        except DlibFormatError:
            return False
        finally:
            self.pos = saved


def _alias_size(dims: tuple[int, int, int, int]) -> int:
    return int(np.prod(dims))


def _read_bn(r: _Reader, layer: DlibLayer) -> None:
    params = r.tensor().reshape(-1)
    gamma_dims = r.alias_tensor()
    r.alias_tensor()  # beta has gamma's shape
    r.tensor()  # means (training batch statistics, unused at inference)
    r.tensor()  # invstds
    running_means = r.tensor().reshape(-1)
    running_variances = r.tensor().reshape(-1)
    r.integer()  # num_updates
    r.integer()  # running_stats_window_size
    for _ in range(4):
        r.real()  # learning-rate / weight-decay multipliers
    eps = r.real()
    n = _alias_size(gamma_dims)
    g, b = params[:n], params[n : 2 * n]
    # dlib's affine_(bn_) conversion: inference batch norm is a per-channel affine map.
    gamma = g / np.sqrt(running_variances + eps)
    layer.arrays["gamma"] = gamma.astype(np.float32)
    layer.arrays["beta"] = (b - gamma * running_means).astype(np.float32)


def _read_details(r: _Reader) -> DlibLayer:
    version = r.string()
    if version == "con_4" or version == "con_5":
        layer = DlibLayer("con")
        params = r.tensor().reshape(-1)
        num_filters = r.integer()
        nr, nc = r.integer(), r.integer()
        stride_y, stride_x = r.integer(), r.integer()
        pad_y, pad_x = r.integer(), r.integer()
        filt = r.alias_tensor()
        bias = r.alias_tensor()
        for _ in range(4):
            r.real()
        use_bias = r.boolean() if version == "con_5" else True
        n_filt = _alias_size(filt)
        layer.arrays["weight"] = params[:n_filt].reshape(filt).copy()
        if use_bias:
            layer.arrays["bias"] = params[n_filt : n_filt + _alias_size(bias)].copy()
        layer.meta.update(
            num_filters=num_filters, nr=nr, nc=nc, stride_y=stride_y, stride_x=stride_x,
            padding_y=pad_y, padding_x=pad_x,
        )
        return layer
    if version == "affine_":
        layer = DlibLayer("affine")
        params = r.tensor().reshape(-1)
        gamma_dims = r.alias_tensor()
        r.alias_tensor()
        layer.meta["mode"] = r.integer()
        n = _alias_size(gamma_dims)
        layer.arrays["gamma"] = params[:n].copy()
        layer.arrays["beta"] = params[n : 2 * n].copy()
        return layer
    if version in ("bn_con2", "bn_fc2"):
        # layer_mode: CONV_MODE = 0 (per channel), FC_MODE = 1 (per element).
        layer = DlibLayer("affine", meta={"mode": 0 if version == "bn_con2" else 1})
        _read_bn(r, layer)
        return layer
    if version == "relu_":
        return DlibLayer("relu")
    if version == "add_prev_":
        return DlibLayer("add_prev")
    if version in ("max_pool_2", "avg_pool_2"):
        layer = DlibLayer(version[:-2])
        keys = ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
        layer.meta.update({key: r.integer() for key in keys})
        return layer
    if version in ("fc_2", "fc_3"):
        layer = DlibLayer("fc")
        num_outputs = r.integer()
        num_inputs = r.integer()
        params = r.tensor().reshape(-1)
        weights = r.alias_tensor()
        biases = r.alias_tensor()
        bias_mode = r.integer()  # 0 = has bias, 1 = no bias
        for _ in range(4):
            r.real()
        if version == "fc_3":
            r.boolean()  # use_bias flag of newer dlib; bias_mode already says it
        n_w = _alias_size(weights)
        # dlib computes output = input (N, num_inputs) x W (num_inputs, num_outputs).
        layer.arrays["weight"] = params[:n_w].reshape(num_inputs, num_outputs).copy()
        if bias_mode == 0:
            layer.arrays["bias"] = params[n_w : n_w + _alias_size(biases)].copy()
        layer.meta.update(num_outputs=num_outputs, num_inputs=num_inputs)
        return layer
    raise r.fail(f"unknown layer type {version!r}")


def _read_layer_tail(r: _Reader, bottom: bool, version: int) -> None:
    for _ in range(3):
        r.boolean()  # setup_called, gradient_input_is_stale, output/gradient getters disabled
    for _ in range(3):
        r.tensor()  # x_grad, cached_output, params_grad / grad_final (empty in a saved model)
    if bottom and version >= 3:
        r.integer()  # sample_expansion_factor


def read_dlib_net(path: Path | str) -> DlibNet:
    """Parse a dlib DNN file whose input layer is an RGB image layer and whose loss is
    ``loss_metric``. Raises :class:`DlibFormatError` (a ModelIntegrityError) naming the file."""
    path = Path(path)
    r = _Reader(path.read_bytes(), path.name)

    if r.integer() != 1:
        raise r.fail("unexpected loss-layer wrapper version")
    loss_kind = r.string()
    if not loss_kind.startswith("loss_metric_"):
        raise r.fail(f"loss {loss_kind!r} is not dlib's metric loss")
    loss_meta = {"margin": r.real(), "dist_thresh": r.real()}

    structure: list[int] = []
    while True:
        version = r.integer()
        if r.peek_string_prefix("input_"):
            bottom_version = version
            break
        if version not in (1, 2):
            raise r.fail(f"unexpected layer wrapper version {version}")
        structure.append(version)

    input_kind = r.string()
    if input_kind not in ("input_rgb_image_sized", "input_rgb_image"):
        raise r.fail(f"input layer {input_kind!r} is not an RGB image layer")
    input_meta = {"avg_red": r.real(), "avg_green": r.real(), "avg_blue": r.real()}
    if input_kind == "input_rgb_image_sized":
        input_meta["nr"] = r.integer()
        input_meta["nc"] = r.integer()

    layers = [_read_details(r)]
    _read_layer_tail(r, bottom=True, version=bottom_version)
    for version in reversed(structure):
        if version == 2:
            layers.append(_read_details(r))
            _read_layer_tail(r, bottom=False, version=version)
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} unread bytes after the network")
    return DlibNet(input_kind, input_meta, loss_kind, loss_meta, layers, [*structure, 2])


def load_face_resnet_arrays(path: Path | str) -> dict[str, np.ndarray]:
    """The parameters of dlib's face ResNet as float32 arrays, named in forward order:

    - ``conv{i}.weight`` (out, in, kh, kw) and ``conv{i}.bias`` (out,), i = 0..28;
    - ``affine{i}.gamma`` / ``affine{i}.beta`` (channels,), i = 0..28, the i-th affine layer
      (dlib's inference form of batch norm: y = gamma * x + beta per channel);
    - ``fc.weight`` (128, 256): the final fc_no_bias layer, laid out like ``torch.nn.Linear``;
    - ``input.mean`` (3,): the per-channel RGB means the input layer subtracts (its ``/256``
      scale is fixed in dlib's code, not stored).
    """
    net = read_dlib_net(path)
    arrays: dict[str, np.ndarray] = {}
    n_conv = n_affine = 0
    for layer in net.layers:
        if layer.kind == "con":
            arrays[f"conv{n_conv}.weight"] = layer.arrays["weight"]
            arrays[f"conv{n_conv}.bias"] = layer.arrays["bias"]
            n_conv += 1
        elif layer.kind == "affine":
            arrays[f"affine{n_affine}.gamma"] = layer.arrays["gamma"].reshape(-1)
            arrays[f"affine{n_affine}.beta"] = layer.arrays["beta"].reshape(-1)
            n_affine += 1
        elif layer.kind == "fc":
            arrays["fc.weight"] = np.ascontiguousarray(layer.arrays["weight"].T)
    meta = net.input_meta
    arrays["input.mean"] = np.array(
        [meta["avg_red"], meta["avg_green"], meta["avg_blue"]], dtype=np.float32
    )
    return arrays
