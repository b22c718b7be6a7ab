import os
import sys

# Two pytest workers (-n 2) share the cores: OpenMP threads that spin while they wait stall the other worker's LAPACK
# calls (run without this, the factorization tests took 10-70x longer: DCT-512 through its lifts 578 s against 8 s).
# `make test` sets it; this covers a plain `pytest -n 2`. It must be set before torch loads the OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

settings.register_profile(
    "twiddle", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile("twiddle")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Tests that each keep one worker busy for a minute or more (Triton's interpreter, in a subprocess): collected first,
# so that pytest-xdist (which hands out the first quarter of the tests round robin) starts them at once and the other
# worker fills in around them, instead of both waiting on them at the end of the run.
_LONG_TESTS = ("tests/test_ops_triton.py::test_triton_kernel_logic_in_the_interpreter[",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not item.nodeid.startswith(_LONG_TESTS))
