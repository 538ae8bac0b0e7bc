"""The fused GPU kernels state the same math as the NumPy fast paths.

Each kernel (``backend.elementwise``) is one Python function: fused by
``cupy.fuse`` on CuPy, run as written on NumPy. Here it runs on the active
backend (the stand-in in CI's second pass) and is compared with the NumPy
fast path computed on the host. Tolerance: a few float32 roundings (the two
write the same formula in a different order).
"""
import numpy as np

from minclip import backend
from minclip import functional as F
from minclip.functional.activation import quick_gelu_grad_kernel, quick_gelu_kernel
from minclip.optim import AdamW
from minclip.tensor import Tensor
from support.compare import assert_allclose, host

RTOL, ATOL = 1e-6, 1e-7


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
