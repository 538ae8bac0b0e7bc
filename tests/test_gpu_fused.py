"""The fused GPU kernels state the same math as the NumPy fast paths.

Each kernel (``backend.elementwise``) is one Python function: fused by
``cupy.fuse`` on CuPy, run as written on NumPy. Here it runs on the active
backend (the stand-in in CI's second pass) and is compared with the NumPy
fast path computed on the host. Tolerance: a few float32 roundings (the two
write the same formula in a different order). On the stand-in, the layer-norm
and softmax nodes are also counted: they must launch their fused kernels and
make fewer array-library calls than their NumPy path would there.
"""
import importlib

import numpy as np
import pytest

from minclip import backend
from minclip import functional as F
from minclip.functional.activation import quick_gelu_grad_kernel, quick_gelu_kernel
from minclip.optim import AdamW
from minclip.tensor import Tensor
from support.compare import assert_allclose, host

# the modules, not the functions of the same name that minclip.functional exports
norm, softmax = (importlib.import_module(f"minclip.functional.{name}") for name in ("norm", "softmax"))

RTOL, ATOL = 1e-6, 1e-7
# Layer norm and softmax: the fused chains regroup sums and products (Σ/D for
# a mean, (a + b)·c for a·c + b·c), so they differ from the NumPy path by a
# few roundings of each dtype, on values of order 1.
ROW_TOLERANCE = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


def on_backend(array):
    return backend.asarray(array)


def test_quick_gelu_kernels_match_the_numpy_path(rng):
    x = (rng.standard_normal((4, 33)) * 4).astype(np.float32)
    g = rng.standard_normal((4, 33)).astype(np.float32)
    k = np.float32(1.702)
    reference = Tensor(x, requires_grad=True).to("numpy")
    out = F.quick_gelu(reference)
    out.backward(g)
    assert_allclose(quick_gelu_kernel(on_backend(x), k), out.numpy(), rtol=RTOL, atol=ATOL)
    assert_allclose(quick_gelu_grad_kernel(on_backend(g), on_backend(x), k), reference.grad, rtol=RTOL, atol=ATOL)


def test_quick_gelu_kernel_keeps_float32_and_saturates_without_nan():
    x = on_backend(np.array([-1e4, -60.0, 0.0, 60.0, 1e4], dtype=np.float32))
    with backend.ignore_overflow():
        y = host(quick_gelu_kernel(x, np.float32(1.702)))
    assert y.dtype == np.float32
    assert_allclose(y, [0.0, 0.0, 0.0, 60.0, 1e4], atol=1e-20)


def test_fused_adamw_step_matches_the_numpy_path(rng):
    shapes = [(5, 3), (7,)]
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(4)]
    group = dict(lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    numpy_path = AdamW([Tensor(start[0]).to("numpy")], **group)          # for its param_groups
    fused = AdamW([Tensor(start[0])], **group)
    params = [p.copy() for p in start]
    fused_params = [on_backend(p.copy()) for p in start]
    states, fused_states = [{} for _ in shapes], [{} for _ in shapes]
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            numpy_path.update_parameter(params[i], g, states[i], numpy_path.param_groups[0])
            fused.update_fused(fused_params[i], on_backend(g), fused_states[i], fused.param_groups[0])
    for ours, reference in zip(fused_params, params):
        assert host(ours).dtype == np.float32
        assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)
    for ours, reference in zip(fused_states, states):
        assert ours["step"] == reference["step"] == len(grads)
        assert_allclose(ours["exp_avg"], reference["exp_avg"], rtol=1e-5, atol=1e-7)
        assert_allclose(ours["exp_avg_sq"], reference["exp_avg_sq"], rtol=1e-5, atol=1e-9)


def run_function(cls, fused, inputs, grad, **options):
    """forward then backward of one Function node, on its NumPy path or its fused path."""
    fn = cls()
    fn.needs_grad = (True,) * len(inputs)
    forward, backward = (fn.forward_fused, fn.backward_fused) if fused else (fn.forward, fn.backward)
    return forward(*inputs, **options), backward(grad)


def row_inputs(rng, dtype, shape=(2, 5, 16)):
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    return x, rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_layer_norm_matches_the_numpy_path(rng, dtype):
    x, g = row_inputs(rng, dtype)
    weight, bias = rng.standard_normal((2, 16)).astype(dtype)
    out, grads = run_function(norm.LayerNormFunction, False, (x, weight, bias), g, eps=1e-5)
    fused_out, fused_grads = run_function(norm.LayerNormFunction, True, tuple(map(on_backend, (x, weight, bias))),
                                          on_backend(g), eps=1e-5)
    assert host(fused_out).dtype == dtype and all(host(d).dtype == dtype for d in fused_grads)
    assert_allclose(fused_out, out, **ROW_TOLERANCE[dtype])
    for ours, reference in zip(fused_grads, grads):
        assert_allclose(ours, reference, **ROW_TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [-1, 1])
def test_fused_softmax_matches_the_numpy_path(rng, dtype, axis):
    x, g = row_inputs(rng, dtype)
    out, (dx,) = run_function(softmax.SoftmaxFunction, False, (x,), g, axis=axis)
    fused_out, (fused_dx,) = run_function(softmax.SoftmaxFunction, True, (on_backend(x),), on_backend(g), axis=axis)
    assert host(fused_out).dtype == host(fused_dx).dtype == dtype
    assert_allclose(fused_out, out, **ROW_TOLERANCE[dtype])
    assert_allclose(fused_dx, dx, **ROW_TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_log_softmax_matches_the_numpy_path(rng, dtype):
    x, g = row_inputs(rng, dtype)
    x[0, 0, :] += 1e4                                                 # a row whose log-probabilities need the shift
    fn, fused_fn = softmax.LogSoftmaxFunction(), softmax.LogSoftmaxFunction()
    fn.axis = fused_fn.axis = -1
    fn.y, fused_fn.y = softmax._log_softmax(x, -1), softmax._log_softmax_fused(on_backend(x), -1)
    assert host(fused_fn.y).dtype == dtype
    assert_allclose(fused_fn.y, fn.y, **ROW_TOLERANCE[dtype])
    assert_allclose(fused_fn.backward_fused(on_backend(g))[0], fn.backward(g)[0], **ROW_TOLERANCE[dtype])


def is_the_standin():
    return backend.get_backend() == "cupy" and __import__("cupy").__file__.endswith("tests/support/cupy/__init__.py")


LAUNCHES = [  # (Function, its array inputs among x, w, b, its options, fused kernels in forward + backward)
    (norm.LayerNormFunction, 3, dict(eps=1e-5), 3),
    (softmax.SoftmaxFunction, 1, dict(axis=-1), 2),
    (softmax.LogSoftmaxFunction, 1, dict(axis=-1), 3),
]


@pytest.fixture
def on_the_standin():
    """The stand-in as the active backend for this test, as the pass chose it (an in-process CLI test
    may have left another backend active, with an explicit --backend), and the previous one back afterwards."""
    previous = backend.get_backend()
    backend.set_backend("cupy")
    yield
    backend.set_backend(previous)


@pytest.mark.skipif(not is_the_standin(), reason="counts array-library calls with the CuPy stand-in: "
                    "runs in the stand-in pass (test_gpu_standin.py)")
@pytest.mark.parametrize("cls, arity, options, kernels", LAUNCHES, ids=["layer_norm", "softmax", "log_softmax"])
def test_fused_rows_make_fewer_array_library_calls(on_the_standin, rng, cls, arity, options, kernels):
    """Forward + backward on the stand-in go through the fused kernels, with fewer calls than the NumPy path."""
    from cupy import _standin
    x, g = row_inputs(rng, np.float32)
    w, b = rng.standard_normal((2, 16)).astype(np.float32)
    inputs = [backend.asarray(a) for a in (x, w, b)[:arity]]
    g = backend.asarray(g)

    def count():
        fn = cls()
        fn.needs_grad = (True,) * len(inputs)
        _standin.reset()
        fn.forward(*inputs, **options)
        fn.backward(g)
        return dict(_standin.calls)

    count()                                                                   # compiles the kernels
    fused = count()
    with backend.plain_paths():                                               # the plain path, on the stand-in
        plain = count()
    launches = {site: n for site, n in fused.items() if site.startswith("minclip/backend.py")}
    print(f"{cls.__name__}: {sum(plain.values())} array-library calls on the NumPy path, "
          f"{sum(fused.values())} fused, of which {sum(launches.values())} fused kernels")
    assert sum(launches.values()) == kernels, f"fused kernel launches by call site: {launches}"
    assert sum(fused.values()) < sum(plain.values()), f"fused: {fused}; NumPy path: {plain}"
