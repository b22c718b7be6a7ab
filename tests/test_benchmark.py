"""Benchmark helpers: the Monarch baseline layer and the benchmark scripts' outputs."""

import torch

from twiddle.benchmark import MonarchLinear


def test_monarch_is_a_linear_map_with_block_structure():
    torch.manual_seed(0)
    layer = MonarchLinear(16).double()
    x = torch.randn(5, 16, dtype=torch.float64)
    W = layer(torch.eye(16, dtype=torch.float64)).T  # columns = images of the basis vectors
    torch.testing.assert_close(layer(x), x @ W.T)
    # each output depends on every input (two mixing stages), with 2 * n * sqrt(n) parameters
    assert (W.abs() > 0).all()
    assert sum(p.numel() for p in layer.parameters()) == 2 * 16 * 4


def test_relaxed_permute_benchmark_script_writes_its_table(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "relaxed_permute.py"
    done = subprocess.run(
        [sys.executable, str(script), "--sizes", "16", "--trials", "2", "--rows", "4", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "relaxed_permute.json").read_text())["rows"]
    assert [r["n"] for r in rows] == [16]
    assert all(r[k] > 0 for r in rows for k in r if k.endswith("_ms"))
    assert "| 16 |" in (tmp_path / "relaxed_permute.md").read_text()


def test_op_loop_benchmark_script_writes_its_table(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "op_loop.py"
    done = subprocess.run(
        [sys.executable, str(script), "--cases", "16x1", "32x3", "--calls", "20", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "op_loop.json").read_text())["rows"]
    assert [(r["n"], r["batch"]) for r in rows] == [(16, 1), (32, 3)]
    assert all(0 < r["op_forward_best_us"] <= r["op_forward_median_us"] for r in rows)
