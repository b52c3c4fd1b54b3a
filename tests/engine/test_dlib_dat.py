"""dlib's serialisation reader on the real face-recognition network file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dladiff_app.core.errors import ModelIntegrityError
from dladiff_app.engine.faces.dlib_dat import (
    DlibFormatError,
    _Reader,
    load_face_resnet_arrays,
    read_dlib_net,
)


@pytest.fixture(scope="module")
def resnet_path(pack) -> Path:  # type: ignore[no-untyped-def]
    return pack.recognition


def test_integers_and_floats_use_dlibs_control_byte_encoding() -> None:
    # 2 | -5 | 300 | 122.78199768066406 as a mantissa/exponent pair (bytes from the real file)
    data = b"\x01\x02" + b"\x81\x05" + b"\x02\x2c\x01" + b"\x03\x62\x90\xf5\x81\x11"
    r = _Reader(data, "x.dat")
    assert r.integer() == 2
    assert r.integer() == -5
    assert r.integer() == 300
    assert r.real() == pytest.approx(122.782, abs=1e-4)
    with pytest.raises(DlibFormatError, match="x.dat"):
        r.integer()


def test_reads_the_whole_face_resnet(resnet_path: Path) -> None:
    net = read_dlib_net(resnet_path)
    kinds = [layer.kind for layer in net.layers]
    assert kinds.count("con") == 29 and kinds.count("affine") == 29
    assert kinds.count("add_prev") == 14 and kinds.count("avg_pool") == 5
    assert kinds[:4] == ["con", "affine", "relu", "max_pool"] and kinds[-2:] == ["avg_pool", "fc"]
    assert net.input_kind == "input_rgb_image_sized"
    assert (net.input_meta["nr"], net.input_meta["nc"]) == (150, 150)
    assert net.loss_kind.startswith("loss_metric")
    assert net.loss_meta["dist_thresh"] == pytest.approx(0.6)
    stem = net.layers[0]
    assert stem.arrays["weight"].shape == (32, 3, 7, 7)
    assert (stem.meta["stride_y"], stem.meta["padding_y"]) == (2, 0)


def test_named_arrays(resnet_path: Path) -> None:
    arrays = load_face_resnet_arrays(resnet_path)
    assert arrays["conv0.weight"].shape == (32, 3, 7, 7)
    assert arrays["conv28.weight"].shape == (256, 256, 3, 3)
    assert arrays["affine28.gamma"].shape == (256,)
    assert arrays["fc.weight"].shape == (128, 256)
    np.testing.assert_allclose(arrays["input.mean"], [122.782, 117.001, 104.298], atol=1e-3)
    for name, value in arrays.items():
        assert value.dtype == np.float32, name
        assert np.isfinite(value).all(), name
    # trained weights, not an empty or constant tensor
    assert float(np.abs(arrays["conv14.weight"]).mean()) > 1e-3


def test_truncated_or_foreign_file_is_a_typed_error(resnet_path: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.dat"
    cut.write_bytes(resnet_path.read_bytes()[:100_000])
    with pytest.raises(ModelIntegrityError, match="cut.dat"):
        read_dlib_net(cut)
    other = tmp_path / "other.dat"
    other.write_bytes(b"PK\x03\x04 not a dlib network")
    with pytest.raises(ModelIntegrityError, match="other.dat"):
        read_dlib_net(other)
