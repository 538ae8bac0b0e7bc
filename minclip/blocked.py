"""Passes over cache-sized blocks of rows, spread over threads: the CPU's fused kernel.

NumPy runs one operation at a time over a whole array. A chain of five
elementwise operations on a (8320, 1024) float32 activation (34 MB) reads and
writes main memory five times, on one core, while PyTorch fuses the chain and
runs it on every core. ``over_rows`` gets most of that back with NumPy
alone:

* the arrays are cut into blocks of rows of about ``BLOCK_BYTES``, so the
  chain's temporaries and in-place steps stay in the core's L2 cache and each
  array crosses main memory about once;
* the blocks are shared among ``threads.pool_threads()`` threads. NumPy
  releases Python's lock inside its loops, so the threads really run at once.

Measured with benchmarks/bench_fast_paths.py on 2 cores (results/fast_paths.json),
forward + backward at the sizes of a 256-wide ViT at batch 128: QuickGELU on
(8320, 1024) 72.7 -> 43.9 ms, layer norm on (8320, 256) 15.8 -> 11.1 ms,
attention 41.3 -> 29.5 ms, an AdamW step (``each``) 31.3 -> 21.0 ms. The
threads pay only when NumPy's BLAS threads do not spin between products
(threads.py).

Each block's result depends only on its own rows, and partial results (the
column sums of a backward) come back in row order, so the answer does not
depend on the number of threads. Ops use this only on NumPy, for arrays of at
least two blocks, outside ``backend.plain_paths()``: see ``worth_it``.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from minclip import backend
from minclip.threads import pool_threads

BLOCK_BYTES = 256 * 1024      # one input block; a chain's few blocks together fit in a 1-2 MB L2 cache

_pool = []                    # the ThreadPoolExecutor, made on first use
_inside = threading.local()   # set while a thread runs a block: a block is never split again


def worth_it(array):
    """Whether an op on ``array`` should take its blocked fast path: NumPy, fast paths on,
    at least two blocks' worth of data, and not already inside a block."""
    return (backend.fast_paths() and backend.backend_name(array) == "numpy"
            and array.nbytes >= 2 * BLOCK_BYTES and not getattr(_inside, "active", False))


def over_rows(kernel, *arrays, threaded=True):
    """``kernel(*blocks)`` for every block of rows of ``arrays``; the list of what it returned, in row order.

    ``arrays`` are 2-D with the same number of rows (a per-row statistic is
    (N, 1); a None stays None); each call gets the same rows of every one. The kernel writes its
    row results into blocks of output arrays passed among ``arrays`` (the
    blocks are views) and returns whatever is per block, such as a partial
    column sum, or None. ``threaded=False`` runs the blocks in this thread
    (see ``one_thread_product``).
    """
    rows = len(arrays[0])
    step = max(1, BLOCK_BYTES // max(1, arrays[0][:1].nbytes))
    starts = list(range(0, rows, step))
    threads = min(pool_threads(), len(starts)) if threaded else 1

    def run(share):                        # one thread's consecutive blocks
        _inside.active = True
        try:
            return [kernel(*(None if a is None else a[start:start + step] for a in arrays)) for start in share]
        finally:
            _inside.active = False

    if threads <= 1:
        return run(starts)
    per_thread = -(-len(starts) // threads)
    shares = [starts[i:i + per_thread] for i in range(0, len(starts), per_thread)]
    return [result for part in _executor().map(run, shares) for result in part]


def one_thread_product(m, n, k):
    """Whether OpenBLAS computes an (m, k) @ (k, n) product on one thread: its thread count is
    m·n·k / (4 · 65536) rounded down (GEMM_MULTITHREAD_THRESHOLD times SMP_THRESHOLD_MIN), so
    one below 2 · 4 · 65536. A kernel that multiplies larger matrices must not run in several
    of these threads: OpenBLAS would split each product over its own threads too, and two
    callers then wait on each other (measured: the attention of a ViT step at 145 tokens took
    6.6 s in threads against 0.2 s in one)."""
    return m * n * k < 2 * 4 * 65536


def each(fn, items, array):
    """``fn(item)`` for every item, spread over the threads, for items that do not depend on
    each other (the parameters of an optimizer step); in order, in this thread, for arrays
    like ``array`` that are not NumPy's or inside ``backend.plain_paths()``."""
    if not backend.fast_paths() or backend.backend_name(array) != "numpy" or pool_threads() <= 1:
        return [fn(item) for item in items]
    return list(_executor().map(fn, items))


def _executor():
    if not _pool:
        _pool.append(ThreadPoolExecutor(max_workers=pool_threads(), thread_name_prefix="minclip-blocks"))
    return _pool[0]


# A child made by fork() inherits the pool object but not its threads: it makes its own.
os.register_at_fork(after_in_child=_pool.clear)
