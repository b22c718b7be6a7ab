"""The README's quick start runs as written."""

import re
from pathlib import Path


def test_quick_start_runs():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"## Quick start\n\n```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README quick start", "exec"), namespace)  # noqa: S102
    assert namespace["y"].shape == (256, 1024)
    assert namespace["result"].relative_error < 1e-12
