import json

import pytest

from twiddle.cli import main


def test_demo_json(capsys):
    assert main(["demo", "-n", "64", "--batch", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 64
    assert out["butterfly"]["params"] == 6 * 32 * 4 + 64
    assert out["linear"]["params"] == 64 * 64 + 64
    assert out["max_abs_error_vs_dense"] < 1e-5
    assert out["butterfly"]["forward_ms"] > 0


def test_demo_table(capsys):
    assert main(["demo", "-n", "100", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "nn.Linear(100, 100)" in out and "twiddle.Butterfly(100, 100)" in out


def test_bad_n():
    with pytest.raises(SystemExit):
        main(["demo", "-n", "0"])
