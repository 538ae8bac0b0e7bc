"""The ResNet ops' fast paths against their plain formulas (``backend.plain_paths``).

Average pooling's tiled path, a 1×1 convolution as one product per image, a
stride-1 convolution's input gradient as a convolution of g, and batch norm's
two-pass statistics compute the same sums in another order, so forward and
every gradient must agree to rounding: 1e-12 of the largest entry in float64,
1e-5 in float32. The convolution cases also assert that their fast path is taken.
"""
import numpy as np
import pytest

from minclip import backend
from minclip import functional as F
from minclip.functional import conv
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


# ------------------------------------------------------------ convolution

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [False, True])
def test_a_one_by_one_convolution_as_one_product_per_image_is_the_plain_one(dtype, bias):
    """Fast path 1: W @ x_n per image, no im2col, on a map of at least PER_IMAGE_MIN_PIXELS."""
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in [(3, 6, 11, 10), (5, 6, 1, 1), (5,)])
    assert conv.one_product_per_image(x, w, (1, 1), (0, 0)), "the case must take fast path 1"
    with backend.plain_paths():
        assert not conv.one_product_per_image(x, w, (1, 1), (0, 0))
    op = (lambda t, u, v: F.conv2d(t, u, v)) if bias else (lambda t, u: F.conv2d(t, u))
    assert_fast_is_plain(op, [x, w, b] if bias else [x, w], dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel, padding, dilation", [
    (3, 1, 1),                      # the ResNet's 3×3 layers
    (3, 0, 1),                      # no padding: the gradient pads by 2
    ((3, 2), (1, 0), 1),            # a rectangular kernel, padded on one axis only
    (3, 2, 2),                      # dilated
    (5, 2, 1),
    (1, 0, 1),                      # a 1×1 kernel on a small map
])
def test_the_input_gradient_as_a_convolution_is_col2im(kernel, padding, dilation, dtype):
    """Fast path 2: with stride 1, dx is g convolved with the flipped, transposed kernel."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 9, 8)).astype(dtype)
    k = conv.as_pair(kernel)
    w = rng.standard_normal((3, 4) + k).astype(dtype)
    pair = conv.as_pair
    assert conv.input_gradient_is_a_convolution(k, (1, 1), pair(padding), pair(dilation)), "must take fast path 2"
    assert_fast_is_plain(lambda t, u: F.conv2d(t, u, padding=padding, dilation=dilation), [x, w], dtype)


def test_the_input_gradient_of_a_strided_or_overpadded_convolution_stays_col2im():
    assert not conv.input_gradient_is_a_convolution((3, 3), (2, 2), (1, 1), (1, 1))
    assert not conv.input_gradient_is_a_convolution((3, 3), (1, 1), (3, 3), (1, 1))   # p > d·(k - 1)


# ------------------------------------------------------------ batch norm

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_two_pass_statistics_are_the_plain_ones(dtype):
    """The fast path of batch_statistics: the same batch statistics, running estimates and gradients."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((4, 3, 5, 6)) * 0.5 + 3).astype(dtype)
    w, b = rng.standard_normal(3).astype(dtype), rng.standard_normal(3).astype(dtype)
    running = {}

    def op(t, u, v):
        running["mean"], running["var"] = t.xp.zeros(3, dtype=dtype), t.xp.ones(3, dtype=dtype)
        return F.batch_norm(t, running["mean"], running["var"], u, v, training=True)
    assert_fast_is_plain(op, [x, w, b], dtype)
    fast = dict(running)
    with backend.plain_paths():
        op(Tensor(x), Tensor(w), Tensor(b))
    for name in ("mean", "var"):
        ours, expected = host(fast[name]), host(running[name])
        np.testing.assert_allclose(ours, expected, rtol=0, atol=TOLERANCE[dtype] * np.abs(expected).max())
