"""Where does the time go? A per-op timer for the autodiff engine.

    from minclip.profile import profile
    with profile() as p:
        loss = clip_loss(*model(images, ids))
        loss.backward()
    print(p.table())

Inside the block every ``Function``'s forward and backward is timed and
summed by op name (``MatMulFunction``, ``SoftmaxFunction``, ``Conv2dFunction``, ...). On the
GPU each timing synchronizes the device first, so the numbers are real
kernel times (and the run is slower than without profiling).

The engine knows nothing of this: ``watch_ops`` wraps the ``forward`` and
``backward`` of every ``Function`` subclass for the length of the block and
puts the originals back afterwards. Any other per-op watcher (the float32
check of the tests, for one) plugs into the same place.
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

    def around(self, fn, phase, run, array):
        """Time ``run()``, the ``phase`` of op ``fn`` on ``array`` (its first input, or the gradient)."""
        sync = _synchronizer(array)
        sync()
        start = time.perf_counter()
        result = run()
        sync()
        key = (type(fn).__name__, phase)
        self.seconds[key] += time.perf_counter() - start
        self.calls[key] += 1
        return result

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
def watch_ops(watcher):
    """Run every op's forward and backward through ``watcher.around(fn, phase, run, array)`` in the block.

    ``run()`` does the real work and returns its result, which ``around``
    must return. An op that calls another op's method directly (a subclass
    calling ``super().forward``) is seen once, as the outer op. Function classes
    defined inside the block are not watched.
    """
    originals = [(cls, phase, vars(cls)[phase]) for cls in _op_classes()
                 for phase in ("forward", "backward") if phase in vars(cls)]
    inside = [False]

    def watched(phase, method):
        def wrapper(fn, *args, **options):
            if inside[0]:
                return method(fn, *args, **options)
            inside[0] = True
            try:
                return watcher.around(fn, phase, lambda: method(fn, *args, **options), args[0] if args else None)
            finally:
                inside[0] = False
        return wrapper

    for cls, phase, method in originals:
        setattr(cls, phase, watched(phase, method))
    try:
        yield watcher
    finally:
        for cls, phase, method in originals:
            setattr(cls, phase, method)


def _op_classes():
    """Every subclass of Function, at any depth."""
    found, stack = [], [Function]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub not in found:
                found.append(sub)
                stack.append(sub)
    return found


def profile():
    """Time every op run inside the block: ``with profile() as p: ...``; ``p`` is the OpProfiler."""
    return watch_ops(OpProfiler())
