"""What every experiment writes: ``results.json``, ``table.md`` and a PNG made of a row of panels."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["write_results", "panels"]


def write_results(out: Path, results: dict, table: str) -> None:
    """Write ``out/results.json`` (indented JSON) and ``out/table.md``."""
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "table.md").write_text(table)


@contextmanager
def panels(path: Path, count: int, width: float, height: float, *, tight: bool = True) -> Iterator[tuple]:
    """A figure of ``count`` axes side by side (each ``width`` × ``height`` inches), yielded as
    ``(figure, [axes...])`` and saved to ``path`` at 110 dpi when the block ends (matplotlib's Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, count, figsize=(width * count, height), squeeze=False)
    try:
        yield fig, list(axes[0])
        if tight:
            fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
