"""The NumPy fast paths compute what the plain formulas beside them compute.

QuickGELU, layer norm and attention take a blocked path on large
NumPy arrays (``minclip.blocked``: row blocks in cache, spread over threads).
Here ``blocked.BLOCK_BYTES`` is shrunk so that small inputs take that path
in many blocks, and every output and gradient is compared with the same op
under ``backend.plain_paths()``. Tolerances: float64 1e-12 relative (the two
paths group sums differently: a few roundings); float32 2e-6 relative to the
largest entry (a few float32 roundings, on values of order 1). The fast
attention node is also gradient-checked on its own, and the threads the
blocked passes take are checked against how NumPy's BLAS was loaded.
"""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from minclip import backend, blocked, gradcheck
from minclip import functional as F
from minclip.functional.attention import AttentionFunction
from minclip.optim import AdamW
from minclip.tensor import Tensor

TOLERANCE = {np.float32: 2e-6, np.float64: 1e-12}

pytestmark = pytest.mark.skipif(backend.get_backend() != "numpy",
                                reason="the blocked paths are NumPy's; CuPy runs fused kernels (test_gpu_fused.py)")


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few rows, so that test-sized arrays take the fast path in many blocks."""
    monkeypatch.setattr(blocked, "BLOCK_BYTES", 200)


def run(op, arrays, g, requires_grad):
    """op(*tensors) and the gradients of sum(op · g) with respect to the inputs that require one."""
    tensors = [Tensor(a, requires_grad=r) for a, r in zip(arrays, requires_grad)]
    out = op(*tensors)
    out.backward(Tensor(g))
    return [out.data] + [t.grad for t, r in zip(tensors, requires_grad) if r]


def assert_same_on_both_paths(op, arrays, requires_grad, rng):
    dtype = arrays[0].dtype.type
    out_shape = op(*[Tensor(a) for a in arrays]).shape
    g = rng.standard_normal(out_shape).astype(dtype)
    fast = run(op, arrays, g, requires_grad)
    with backend.plain_paths():
        plain = run(op, arrays, g, requires_grad)
    for f, p in zip(fast, plain):
        assert f.dtype == p.dtype == dtype
        np.testing.assert_allclose(f, p, rtol=0, atol=TOLERANCE[dtype] * np.abs(p).max())


def attention_inputs(rng, dtype, B=3, H=2, T=7, d=4):
    return [rng.standard_normal((B, H, T, d)).astype(dtype) for _ in range(3)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_quick_gelu_fast_path_matches_the_plain_one(small_blocks, rng, dtype):
    x = (rng.standard_normal((37, 11)) * 4).astype(dtype)
    x[0, :3] = (-100, 0, 100)                                    # σ overflows to exactly 0 and 1
    assert_same_on_both_paths(F.quick_gelu, [x], [True], rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_fast_path_matches_the_plain_one(small_blocks, rng, dtype):
    x = (rng.standard_normal((5, 9, 16)) * 3 + 2).astype(dtype)
    w, b = rng.standard_normal(16).astype(dtype), rng.standard_normal(16).astype(dtype)
    assert_same_on_both_paths(F.layer_norm, [x, w, b], [True, True, True], rng)
    assert_same_on_both_paths(F.layer_norm, [x, w, b], [False, True, False], rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("masked", [False, True])
def test_attention_fast_path_matches_the_composition(small_blocks, rng, dtype, masked):
    mask = np.triu(np.full((7, 7), -np.inf, dtype=dtype), 1) if masked else None
    attention = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, mask)  # noqa: E731
    assert_same_on_both_paths(attention, attention_inputs(rng, dtype), [True, True, True], rng)
    assert_same_on_both_paths(attention, attention_inputs(rng, dtype), [False, True, False], rng)


def test_attention_fast_path_is_one_node(small_blocks, rng):
    q, k, v = (Tensor(a, requires_grad=True) for a in attention_inputs(rng, np.float32))
    assert isinstance(F.scaled_dot_product_attention(q, k, v)._ctx, AttentionFunction)
    with backend.plain_paths():
        assert not isinstance(F.scaled_dot_product_attention(q, k, v)._ctx, AttentionFunction)


def test_attention_node_passes_a_gradient_check(rng):
    mask = np.triu(np.full((5, 5), -np.inf), 1)
    assert gradcheck(lambda q, k, v: AttentionFunction.apply(q, k, v, mask=mask),
                     *attention_inputs(rng, np.float64, B=2, T=5, d=3))


def test_results_do_not_depend_on_the_number_of_threads(small_blocks, rng, monkeypatch):
    x = rng.standard_normal((50, 16)).astype(np.float32)
    w, b = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    results = []
    for threads in (1, 3):
        monkeypatch.setattr(blocked, "pool_threads", lambda: threads)
        results.append(run(F.layer_norm, [x, w, b], g, [True, True, True]))
    for one, three in zip(*results):
        np.testing.assert_array_equal(one, three)


def test_over_rows_hands_out_matching_blocks_in_row_order(small_blocks, monkeypatch):
    monkeypatch.setattr(blocked, "pool_threads", lambda: 2)
    a = np.arange(60.0).reshape(30, 2)                            # 16 bytes a row: 12 rows a block
    out = np.zeros_like(a)

    def kernel(rows, stats, none, into):
        assert none is None and len(rows) == len(stats) == len(into) <= 12
        assert not blocked.worth_it(np.zeros(1000))              # a block is never split again
        into[...] = rows * 2
        return rows[0, 0]

    firsts = blocked.over_rows(kernel, a, a[:, :1], None, out)
    assert firsts == [0.0, 24.0, 48.0]
    np.testing.assert_array_equal(out, a * 2)


def test_the_switch_turns_the_fast_paths_off():
    big = np.zeros((64, 2 * blocked.BLOCK_BYTES // 256), dtype=np.float32)
    assert blocked.worth_it(big)
    with backend.plain_paths():
        assert not backend.fast_paths() and not blocked.worth_it(big)
    assert backend.fast_paths()


def test_optimizer_updates_spread_over_threads_match_the_plain_loop(rng, monkeypatch):
    monkeypatch.setattr(blocked, "pool_threads", lambda: 3)
    shapes = [(40, 30), (30,), (7, 5, 3), (1,)]
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)]
    results = []
    for plain in (False, True):
        params = [Tensor(a.copy(), requires_grad=True) for a in start]
        optimizer = AdamW(params, lr=0.1, weight_decay=0.1)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.copy()
            if plain:
                with backend.plain_paths():
                    optimizer.step()
            else:
                optimizer.step()
        results.append([p.data for p in params])
    for threaded, plain in zip(*results):
        np.testing.assert_array_equal(threaded, plain)


def test_attention_keeps_products_that_blas_would_split_out_of_the_threads(rng):
    small = AttentionFunction()
    small.q, small.v = np.zeros((2, 4, 65, 64)), np.zeros((2, 4, 65, 64))      # 65·65·64: one BLAS thread
    large = AttentionFunction()
    large.q, large.v = np.zeros((2, 4, 145, 64)), np.zeros((2, 4, 145, 64))    # 145·145·64: several
    assert small.threaded() and not large.threaded()


def run_python(code, **environ):
    """``code`` in a fresh interpreter from the project root, with OPENBLAS_THREAD_TIMEOUT unset."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=pathlib.Path(__file__).parent.parent, env={**env, "OMP_NUM_THREADS": "2", **environ})
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_minclip_loaded_before_numpy_shortens_the_blas_spin_and_uses_threads():
    report = ("import os; from minclip import threads; "
              "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'), threads.pool_threads())")
    assert run_python("import minclip; " + report) == ["12", "2"]
    assert run_python("import minclip; " + report, OPENBLAS_THREAD_TIMEOUT="20") == ["20", "2"]   # the user's choice
    assert run_python("import numpy, minclip; " + report) == ["None", "1"]   # too late to change NumPy's BLAS
