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


def test_relative_links_in_readme_and_docs_point_to_files():
    root = Path(__file__).parents[1]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    missing = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" not in target and not (page.parent / target).exists():
                missing.append(f"{page.relative_to(root)}: {target}")
    assert not missing, missing
