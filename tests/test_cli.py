import json

import pytest

from twiddle.cli import main


def test_demo_json(capsys):
    assert main(["demo", "-n", "64", "--batch", "8", "--json", "--skip-factorize"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 64
    assert out["butterfly"]["params"] == 6 * 32 * 4 + 64
    assert out["linear"]["params"] == 64 * 64 + 64
    assert out["max_abs_error_vs_dense"] < 1e-5
    assert out["butterfly"]["forward_ms"] > 0


def test_demo_table(capsys):
    assert main(["demo", "-n", "100", "--batch", "4", "--skip-factorize"]) == 0
    out = capsys.readouterr().out
    assert "nn.Linear(100, 100)" in out and "twiddle.Butterfly(100, 100)" in out


def test_bad_n():
    with pytest.raises(SystemExit):
        main(["demo", "-n", "0"])


def test_bench_json_and_files(capsys, tmp_path):
    assert main(["bench", "--sizes", "16", "--batches", "2", "--memory-batch", "64", "--out", str(tmp_path),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    methods = {r["method"] for r in out["rows"]}
    assert methods == {"linear", "monarch", "fft", "butterfly", "reference"}
    for r in out["rows"]:
        assert r["n"] == 16 and r["batch"] == 2
        assert r["forward_ms"] > 0 and r["forward_backward_ms"] > 0
        assert r["peak_extra_memory_x_input"] is not None
    assert (tmp_path / "multiply.json").exists() and (tmp_path / "multiply.png").stat().st_size > 1000


def test_bench_table(capsys):
    assert main(["bench", "--sizes", "16", "--batches", "1", "--methods", "linear", "butterfly"]) == 0
    table = capsys.readouterr().out
    assert "| 16 | 1 | butterfly |" in table and "speed-up vs Linear" in table


def test_bench_butterfly_fft_method(capsys):
    """The DFT as a complex butterfly, on the FFT's complex64 input: its row names the kernel that ran and its
    time against torch.fft from the same run."""
    assert main(["bench", "--sizes", "16", "--batches", "3", "--methods", "fft", "butterfly-fft", "--memory-batch",
                 "64", "--json"]) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["butterfly-fft"]["kernel"] in ("fused-cpu", "reference")
    assert rows["butterfly-fft"]["forward_ms"] > 0 and rows["butterfly-fft"]["peak_extra_memory_x_input"] is not None


def test_bench_rejects_bad_sizes():
    with pytest.raises(SystemExit):
        main(["bench", "--sizes", "0"])


def test_factor_json(capsys):
    assert main(["factor", "dft", "-n", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"] == "dft" and out["n"] == 64 and out["method"] == "hierarchical"
    assert out["relative_error"] < 1e-12 and out["rmse"] < 1e-12
    assert {"seconds", "params", "permutation"} <= set(out)


def test_factor_npy_and_summary(capsys, tmp_path):
    import numpy as np

    path = tmp_path / "h.npy"
    np.save(path, np.array([[1.0, 1.0], [1.0, -1.0]]))
    assert main(["factor", str(path), "--permutation", "identity"]) == 0
    assert "relative error" in capsys.readouterr().out
    # any shape: zero-padded, to the least power of two or to --size
    np.save(path, np.random.default_rng(0).standard_normal((3, 5)))
    assert main(["factor", str(path), "--size", "16", "--json", "--out", str(tmp_path / "m.safetensors")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["shape"] == [3, 5] and out["n"] == 16


def test_factor_sparse_matrix_market_file(capsys, tmp_path):
    import scipy.io
    import scipy.linalg
    import scipy.sparse

    path = tmp_path / "hadamard.mtx"  # a sparse file: the factorization sees the dense matrix
    scipy.io.mmwrite(path, scipy.sparse.coo_matrix(scipy.linalg.hadamard(16)))
    assert main(["factor", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"] == str(path) and out["shape"] == [16, 16] and out["relative_error"] < 1e-12
    with pytest.raises(SystemExit, match="does not exist"):
        main(["factor", str(tmp_path / "missing.csv")])


@pytest.mark.parametrize("argv", [["factor", "fourier", "-n", "8"], ["factor", "dft"],
                                  ["factor", "dft", "-n", "8", "--size", "6"]])
def test_factor_bad_input(argv):
    with pytest.raises(SystemExit):
        main(argv)


def test_factor_gradient_json(capsys):
    assert main(["factor", "dft", "-n", "8", "--method", "gradient", "--time-budget", "60", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "gradient" and out["permutation"] == "learned" and out["rmse"] < 1e-4


def test_factor_polish_start_option(capsys):
    assert main(["factor", "convolution", "-n", "16", "--method", "gradient", "--model", "bpbp", "--polish-start",
                 "alternating", "--time-budget", "60", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "gradient" and out["rmse"] < 1e-4
    with pytest.raises(SystemExit, match="needs model='bpbp'"):  # a clear error, not a traceback
        main(["factor", "dft", "-n", "8", "--method", "gradient", "--polish-start", "alternating"])


def test_demo_main_job_with_factorization(capsys):
    assert main(["demo", "-n", "64", "--batch", "8"]) == 0
    out = capsys.readouterr().out
    assert "DFT-1024, hierarchical" in out and "DFT-32, gradient" in out and "torch.fft.fft" in out


def test_factor_out_saves_a_loadable_module(capsys, tmp_path):
    import torch

    from twiddle.factorize import PermutedButterfly, target_matrix

    path = tmp_path / "dft.safetensors"
    assert main(["factor", "dft", "-n", "32", "--out", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(path)
    module = PermutedButterfly.load(path)
    torch.testing.assert_close(module.to_dense(), target_matrix("dft", 32), atol=1e-12, rtol=0)


def test_output_piped_into_a_reader_that_stops_early(tmp_path):
    """`twiddle factor ... | head -1`: the reader closes the pipe; the command ends without a traceback."""
    import subprocess
    import sys

    code = "from twiddle.cli import main; import sys; sys.exit(main(['factor', 'hadamard', '-n', '8', '--json']))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader has gone before anything is written
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_factor_time_budget_applies_to_the_closed_form_search(capsys):
    with pytest.warns(UserWarning, match="time budget"):
        assert main(["factor", "randn", "-n", "16", "--time-budget", "1e-9", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "hierarchical" and out["untried"] > 0
