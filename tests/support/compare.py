"""NumPy's test comparisons for arrays of any backend (and Tensors).

Tests compare through the host: each argument is copied there first
(``Tensor.numpy()``, ``backend.to_numpy``), so the same assertion checks a
NumPy run and a CuPy run.
"""
import numpy as np

from minclip.backend import to_numpy
from minclip.tensor import Tensor


def host(value):
    """``value`` (a Tensor, NumPy or CuPy array, or plain data) as NumPy data."""
    if isinstance(value, Tensor):
        return value.numpy()
    if hasattr(value, "shape"):
        return to_numpy(value)
    return value


def assert_allclose(actual, desired, *args, **kwargs):
    np.testing.assert_allclose(host(actual), host(desired), *args, **kwargs)


def assert_array_equal(actual, desired, *args, **kwargs):
    np.testing.assert_array_equal(host(actual), host(desired), *args, **kwargs)


def array_equal(a, b):
    return np.array_equal(host(a), host(b))


def allclose(a, b, *args, **kwargs):
    return np.allclose(host(a), host(b), *args, **kwargs)
