"""Shared test fixtures: everything is built locally at test time, nothing is downloaded.

Builders live in ``tests/fixtures`` so benchmarks and other tools can reuse them.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Stable Diffusion pipeline folder (diffusers format, save_pretrained)."""
    from tests.fixtures.tiny_sd import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd") / "pipeline")


@pytest.fixture(scope="session")
def tiny_scrfd_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ONNX detector shaped like insightface's SCRFD (loads via model_zoo.get_model)."""
    from tests.fixtures.tiny_onnx import build_tiny_scrfd

    return build_tiny_scrfd(tmp_path_factory.mktemp("onnx") / "det_tiny.onnx")


@pytest.fixture(scope="session")
def tiny_arcface_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ONNX 112x112 recognizer shaped like insightface's ArcFace."""
    from tests.fixtures.tiny_onnx import build_tiny_arcface

    return build_tiny_arcface(tmp_path_factory.mktemp("onnx") / "rec_tiny.onnx")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Pin torch to one thread for a test module (``pytestmark = usefixtures(...)``).

    On a loaded 2-core machine two busy-waiting BLAS threads run the tiny models many times
    slower than one thread does; the setting is restored afterwards.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
