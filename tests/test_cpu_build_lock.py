"""The kernel build's own lock: a stale torch build baton is removed, a live holder is waited for."""

import threading
import time

import pytest

from twiddle.ops import _cpu_build

fcntl = pytest.importorskip("fcntl")


def test_stale_torch_baton_is_removed(tmp_path):
    baton = tmp_path / "lock"
    baton.touch()  # what a process killed mid-build leaves behind
    with _cpu_build._exclusive_build(tmp_path):
        assert not baton.exists()
    assert (tmp_path / "twiddle-build.lock").exists()


def test_second_loader_waits_for_the_first(tmp_path):
    events = []
    entered = threading.Event()

    def first():
        with _cpu_build._exclusive_build(tmp_path):
            entered.set()
            time.sleep(0.3)
            events.append("first done")

    worker = threading.Thread(target=first)
    worker.start()
    assert entered.wait(10)
    with _cpu_build._exclusive_build(tmp_path):  # a separate open file: flock conflicts even within one process
        events.append("second in")
    worker.join()
    assert events == ["first done", "second in"]


def test_build_directory_follows_torch_extensions_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    directory = _cpu_build._build_directory()
    assert directory == tmp_path / _cpu_build._EXTENSION_NAME
    assert directory.is_dir()


def test_build_directory_default_matches_torch(monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    private = getattr(cpp_extension, "_get_build_directory", None)
    if private is None:
        pytest.skip("torch no longer exposes _get_build_directory")
    assert str(_cpu_build._build_directory()) == private(_cpu_build._EXTENSION_NAME, False)
