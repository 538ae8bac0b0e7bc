"""The ResNet ops' fast paths against their plain formulas (``backend.plain_paths``).

Average pooling's tiled path computes the same sums in another order, so
forward and every gradient must agree to rounding: 1e-12 of the largest entry
in float64, 1e-5 in float32.
"""
import numpy as np
import pytest

from minclip import backend
from minclip import functional as F
from minclip.tensor import Tensor
from support.compare import host

TOLERANCE = {np.float64: 1e-12, np.float32: 1e-5}


def outputs_and_gradients(op, arrays):
    """op(*tensors) and the gradients of Σ op · (a fixed pattern) for each input."""
    tensors = [Tensor(a, requires_grad=True) for a in arrays]
    out = op(*tensors)
    pattern = np.cos(np.arange(out.data.size)).reshape(out.shape).astype(out.dtype)
    (out * Tensor(pattern)).sum().backward()
    return [host(out.data)] + [host(t.grad) for t in tensors]


def assert_fast_is_plain(op, arrays, dtype):
    fast = outputs_and_gradients(op, arrays)
    with backend.plain_paths():
        plain = outputs_and_gradients(op, arrays)
    for ours, expected in zip(fast, plain):
        assert ours.dtype == expected.dtype == dtype
        np.testing.assert_allclose(ours, expected, rtol=0, atol=TOLERANCE[dtype] * np.abs(expected).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernel", [((2, 3, 8, 6), 2), ((2, 3, 9, 6), (3, 2)), ((64, 8, 16, 16), 2)])
def test_tiled_average_pool_is_the_plain_one(shape, kernel, dtype):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    assert_fast_is_plain(lambda t: F.avg_pool2d(t, kernel), [x], dtype)


def test_average_pool_of_one_pixel_windows_is_the_input_itself():
    x = Tensor(np.ones((1, 2, 3, 3), dtype=np.float32))
    assert F.avg_pool2d(x, 1) is x
    with backend.plain_paths():
        assert F.avg_pool2d(x, 1) is not x
