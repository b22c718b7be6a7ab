import json
import math

import pytest

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
