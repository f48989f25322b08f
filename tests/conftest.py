"""Test setup shared by every test file.

* Without a GPU, Triton kernels run in the interpreter: TRITON_INTERPRET=1 must be set before
  any module defining @triton.jit kernels is imported, so it is set here, first.
* Tests marked ``gpu`` are skipped when torch sees no CUDA device (``make gpu-check`` runs them).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Two cores in CI: keep intra-op threads at the core count and make runs deterministic. The
# training processes tests start inherit the count through OMP_NUM_THREADS: CPU results depend on
# the thread count, and the engine's own choice (adautomix_fast.runtime.cputhreads) follows the machine's
# load, which a test comparing two processes' weights must not.
THREADS = max(1, min(2, os.cpu_count() or 1))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]) if os.environ["OMP_NUM_THREADS"].isdigit() else THREADS)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run by `make gpu-check`)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cpu_generator():
    return torch.Generator().manual_seed(1234)


# The real data sets a machine holds ($ADAUTOMIX_DATA/<dataset>; .ci/run extracts CIFAR-10 there
# where it can), read before any test runs: the fixture below hides the variable from the tests.
REAL_DATA = os.environ.get("ADAUTOMIX_DATA")


@pytest.fixture
def real_data():
    """``real_data("cifar10")``: the folder of a real data set, or a skip saying how to provide it."""
    def folder(name: str) -> str:
        path = os.path.join(REAL_DATA, name) if REAL_DATA else None
        if path is None or not os.path.isdir(path):
            pytest.skip(f"no real {name}: set ADAUTOMIX_DATA to a folder holding {name}/ (any layout the "
                        f"engine reads; .ci/run extracts CIFAR-10 there when the machine has it)")
        return path
    return folder


@pytest.fixture(autouse=True)
def no_data_env(monkeypatch):
    """Tests name their data explicitly: a user's $ADAUTOMIX_DATA must not change what they read."""
    monkeypatch.delenv("ADAUTOMIX_DATA", raising=False)

