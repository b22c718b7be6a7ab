"""Build-on-first-use of the fused CPU kernels (``csrc/butterfly_cpu.cpp``: the butterfly multiply;
``csrc/relaxed_permute_cpu.cpp``: the gradient method's relaxed permutation; ``csrc/eager_entry.cpp``: the
extension's Python module, a faster entry to the butterfly op for eager calls).

The extension is compiled once per machine with ``-O3 -march=native -fopenmp`` and cached by
``torch.utils.cpp_extension`` (under ``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``); a changed
source triggers a rebuild. Where no compiler (or ninja) is present, :func:`load` returns False and warns once;
callers then use the reference multiply.

``torch.utils.cpp_extension`` guards a build folder with a plain ``lock`` file that it creates and deletes; a
process killed while it holds that file (a timed-out job, a restarted machine) leaves it behind, and every later
load waits for it forever. The load here therefore runs under an operating-system lock of its own
(``fcntl.flock`` on ``twiddle-build.lock`` in the build folder, released by the kernel when its holder dies):
whoever holds it is the only twiddle process loading, so a ``lock`` file found then is stale and is removed.

Set ``TWIDDLE_KERNEL=reference`` to never build or use the fused kernel.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

_SOURCES = [
    Path(__file__).with_name("csrc") / name
    for name in ("butterfly_cpu.cpp", "relaxed_permute_cpu.cpp", "eager_entry.cpp")
]
_EXTENSION_NAME = "twiddle_butterfly_cpu"
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
                build_directory = _build_directory()
                with _exclusive_build(build_directory):
                    _state["module"] = cpp_extension.load(
                        name=_EXTENSION_NAME,
                        sources=[str(source) for source in _SOURCES],
                        extra_cflags=["-O3", "-march=native", "-fopenmp", "-fno-math-errno"],
                        extra_ldflags=["-fopenmp"],
                        build_directory=str(build_directory),
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


def _build_directory() -> Path:
    """The folder ``torch.utils.cpp_extension`` would pick for the extension (created if missing):
    ``$TORCH_EXTENSIONS_DIR/<name>``, else ``<torch's cache>/torch_extensions/py<XY>_cpu/<name>``."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is None:
        from torch.utils import cpp_extension

        if torch.version.hip is not None:
            accelerator = "rocm" + torch.version.hip.replace(".", "")
        elif torch.version.cuda is not None:
            accelerator = "cu" + torch.version.cuda.replace(".", "")
        else:
            accelerator = "cpu"
        python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
        root = os.path.join(cpp_extension.get_default_build_root(), f"{python}_{accelerator}")
    directory = Path(root) / _EXTENSION_NAME
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@contextlib.contextmanager
def _exclusive_build(directory: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``directory/twiddle-build.lock`` (waiting for another process that holds
    it), and remove a stale ``directory/lock`` (torch's build baton) left by a process that died while building.

    Without ``fcntl`` (Windows) nothing is locked and nothing removed: torch's own baton is all there is.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        yield
        return
    with open(directory / "twiddle-build.lock", "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            baton = directory / "lock"
            if baton.exists():
                baton.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


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
