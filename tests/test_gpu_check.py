"""benchmarks/gpu_check.sh and bench_varlen_attention.py run only in the rare sessions lent a GPU, once, under a
10-minute command: their shell logic and failure handling are checked here on the CPU, without running a part."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_gpu_check_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_gpu_check_skips_parts_past_its_budget_and_without_traces(tmp_path):
    """BUDGET=0 leaves no time for any part: each is recorded as skipped, the summary still prints, exit 0; and a
    RUN without filtered traces says that the training parts are skipped instead of skipping them silently."""
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PY=sys.executable, BUDGET="0", RUN=str(tmp_path / "no-run"),
               PARTS="varlen packing mfu-packed pipeline")
    # run from an empty folder: no .whl/ there to install, and nothing written into the checkout
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    parts = (out / "parts.txt").read_text().split("\n")
    assert "varlen skipped-budget" in parts
    assert any(p.startswith("mfu") and p.endswith("skipped-budget") for p in parts)
    assert "no-RUN-filtered skipped" in parts
    assert "=== [" in (out / "log").read_text()


def test_varlen_bench_reports_a_failing_path_and_runs_the_rest(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("bench_varlen_attention",
                                                  ROOT / "benchmarks" / "bench_varlen_attention.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    real = bench.run

    def run(path, *args):
        if path == "stock sdpa, block mask":
            raise TypeError("varlen_attn() got an unexpected keyword argument 'scale'")
        return real(path, *args)

    monkeypatch.setattr(bench, "run", run)
    with pytest.raises(SystemExit, match="failed: stock sdpa, block mask"):
        bench.main(["--device", "cpu", "--tokens", "128", "--steps", "1"])
    text = capsys.readouterr().out
    assert "stock sdpa, block mask       FAILED: TypeError" in text
    assert "per trace" in text and "x1.00 vs per trace" in text
