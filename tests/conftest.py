"""Shared test helpers: the torch and GPU skips, and the --exercise selector."""
import numpy as np
import pytest

from minclip import backend


def pytest_addoption(parser):
    parser.addoption("--exercise", action="append", default=[],
                     help="run only the tests of course exercise ID (e.g. --exercise 2.3); repeatable")


def pytest_collection_modifyitems(config, items):
    wanted = config.getoption("--exercise")
    if not wanted:
        return
    keep, drop = [], []
    for item in items:
        ids = {str(m.args[0]) for m in item.iter_markers("exercise") if m.args}
        (keep if ids & set(wanted) else drop).append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep


def _gpu_available():
    try:
        import cupy
        return bool(cupy.cuda.is_available())
    except Exception:
        return False


GPU = _gpu_available()
requires_gpu = pytest.mark.skipif(not GPU, reason="needs CuPy and an NVIDIA GPU")


@pytest.fixture
def torch():
    """PyTorch, the reference implementation (the test skips cleanly without it)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    return torch


@pytest.fixture
def rng():
    """A seeded NumPy generator for test inputs."""
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seed_minclip():
    """Every test starts from the same minclip random state."""
    backend.seed(0)
    yield
