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
