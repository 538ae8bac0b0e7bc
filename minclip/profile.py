"""Where does the time go? A per-op timer for the autodiff engine.

    from minclip.profile import profile
    with profile() as p:
        loss = clip_loss(*model(images, ids))
        loss.backward()
    print(p.table())

Inside the block every ``Function``'s forward and backward is timed and
summed by op name (``MatMul``, ``Softmax``, ``Conv2dFunction``, ...). On the
GPU each timing synchronizes the device first, so the numbers are real
kernel times (and the run is slower than without profiling).
"""
import time
from collections import defaultdict
from contextlib import contextmanager

from minclip.backend import array_module
from minclip.tensor import Function


class OpProfiler:
    """Accumulates seconds and calls per (op, forward|backward)."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)

    def _timed(self, key, array, work):
        sync = _synchronizer(array)
        sync()
        start = time.perf_counter()
        result = work()
        sync()
        self.seconds[key] += time.perf_counter() - start
        self.calls[key] += 1
        return result

    def time_forward(self, fn, inputs, options):
        arrays = [t.data for t in inputs]
        return self._timed((type(fn).__name__, "forward"), arrays[0] if arrays else None,
                           lambda: fn.forward(*arrays, **options))

    def time_backward(self, fn, grad):
        return self._timed((type(fn).__name__, "backward"), grad, lambda: fn.backward(grad))

    def total(self):
        return sum(self.seconds.values())

    def table(self, top=20):
        """The ``top`` most expensive (op, pass) pairs as text, with their share of the total."""
        total = self.total() or 1.0
        rows = sorted(self.seconds.items(), key=lambda kv: -kv[1])[:top]
        lines = [f"{'op':<28}{'pass':<10}{'calls':>7}{'ms':>10}{'share':>8}"]
        for (name, phase), seconds in rows:
            lines.append(f"{name:<28}{phase:<10}{self.calls[(name, phase)]:>7}"
                         f"{1000 * seconds:>10.1f}{100 * seconds / total:>7.1f}%")
        lines.append(f"{'total':<45}{1000 * self.total():>10.1f}")
        return "\n".join(lines)


def _synchronizer(array):
    if array is None or array_module(array).__name__ == "numpy":
        return lambda: None
    import cupy
    return cupy.cuda.Device().synchronize


@contextmanager
def profile():
    """Time every op run inside the block; yields the OpProfiler."""
    profiler = OpProfiler()
    previous, Function.profiler = Function.profiler, profiler
    try:
        yield profiler
    finally:
        Function.profiler = previous
