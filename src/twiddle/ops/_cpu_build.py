"""Build-on-first-use of the fused CPU kernels (``csrc/butterfly_cpu.cpp``: the butterfly multiply;
``csrc/relaxed_permute_cpu.cpp``: the gradient method's relaxed permutation; ``csrc/eager_entry.cpp``: the
extension's Python module, a faster entry to the butterfly op for eager calls).

The extension is compiled once per machine with ``-O3 -march=native -fopenmp`` and cached by
``torch.utils.cpp_extension`` (under ``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``); a changed
source triggers a rebuild. Where no compiler (or ninja) is present, :func:`load` returns False and warns once;
callers then use the reference multiply.

Set ``TWIDDLE_KERNEL=reference`` to never build or use the fused kernel.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import torch

_SOURCES = [
    Path(__file__).with_name("csrc") / name
    for name in ("butterfly_cpu.cpp", "relaxed_permute_cpu.cpp", "eager_entry.cpp")
]
_lock = threading.Lock()
_state: dict[str, object] = {"tried": False, "ok": False, "error": None, "module": None}


def _already_registered() -> bool:
    return hasattr(torch.ops, "twiddle") and all(
        hasattr(torch.ops.twiddle, op) for op in ("butterfly_multiply", "relaxed_permute")
    )


def load() -> bool:
    """Compile (first time) and load the kernel library; True when ``torch.ops.twiddle.butterfly_multiply`` exists."""
    if _state["tried"]:
        return bool(_state["ok"])
    with _lock:
        if _state["tried"]:
            return bool(_state["ok"])
        if os.environ.get("TWIDDLE_KERNEL", "auto") == "reference":
            _state.update(tried=True, ok=False, error="disabled by TWIDDLE_KERNEL=reference")
            return False
        try:
            if not _already_registered():
                from torch.utils import cpp_extension

                _put_ninja_on_path()
                _state["module"] = cpp_extension.load(
                    name="twiddle_butterfly_cpu",
                    sources=[str(source) for source in _SOURCES],
                    extra_cflags=["-O3", "-march=native", "-fopenmp", "-fno-math-errno"],
                    extra_ldflags=["-fopenmp"],
                    is_python_module=True,
                    verbose=False,
                )
            ok = _already_registered()
            _state.update(tried=True, ok=ok, error=None if ok else "library loaded but ops missing")
        except Exception as exc:  # noqa: BLE001 - any build failure means: fall back
            _state.update(tried=True, ok=False, error=f"{type(exc).__name__}: {exc}")
        if not _state["ok"]:
            warnings.warn(
                "twiddle: the fused CPU butterfly kernel could not be built; using the (slower) reference "
                f"multiply. Reason: {str(_state['error'])[:500]}",
                RuntimeWarning,
                stacklevel=3,
            )
        return bool(_state["ok"])


def _put_ninja_on_path() -> None:
    """The ``ninja`` pip package installs its binary next to the interpreter; make sure a subprocess finds it even
    when the virtual environment is not activated (e.g. ``.venv/bin/python -m pytest``)."""
    import shutil
    import sys

    if shutil.which("ninja") is None:
        bindir = os.path.dirname(sys.executable)
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def module() -> object | None:
    """The extension's Python module (``csrc/eager_entry.cpp``), or None where it was not loaded here (no build, or
    the ops were already registered by another copy of the library)."""
    return _state["module"]


def error() -> str | None:
    """Why the kernel is unavailable (None if it loaded or was never tried)."""
    return _state["error"]  # type: ignore[return-value]
