"""The tutorial's code blocks run in order as written, and the API documentation builds from the docstrings."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_tutorial_runs(capsys):
    text = (ROOT / "docs" / "tutorial.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 7
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"tutorial block {i + 1}", "exec"), namespace)  # noqa: S102
    assert namespace["result"].relative_error < 1e-10


@pytest.mark.skipif(importlib.util.find_spec("pdoc") is None, reason="pdoc is not installed")
def test_api_docs_build(tmp_path):
    makefile = (ROOT / "Makefile").read_text()
    modules = re.search(r"pdoc -o docs/api (.*?)\n\n", makefile, re.S).group(1).replace("\\\n", " ").split()
    out = subprocess.run([sys.executable, "-m", "pdoc", "-o", str(tmp_path), *modules],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "twiddle.html").is_file()
    assert (tmp_path / "twiddle" / "factorize.html").is_file()
