"""benchmarks/gpu_check.sh writes its results file as each stage finishes, also when a stage
fails (here one made to fail), and says which stage failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.gpu_readiness


def test_results_written_when_a_stage_fails(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check"
    env = dict(os.environ, PY=sys.executable, OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--size", "64",
         "--photos", "1", "--stages", "device,layer2,peak_memory", "--fail-stage", "layer2",
         "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads((out / "gpu_check_cpu_64.json").read_text())
    stages = data["stages"]
    assert list(stages) == ["device", "layer2", "peak_memory"]
    assert stages["device"]["status"] == "ok" and stages["device"]["kind"] == "cpu"
    assert stages["layer2"]["status"] == "failed"
    assert "failure injected into stage layer2" in stages["layer2"]["error"]
    # The stage after the failed one still ran and was written.
    assert stages["peak_memory"]["status"] == "ok"
    assert data["passed"] is False
    md = (out / "gpu_check_cpu_64.md").read_text()
    assert "| layer2 | failed |" in md and "Some stage failed" in md
