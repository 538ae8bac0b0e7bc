"""``cupy.random`` of the stand-in: CuPy's ``Generator`` methods only.

The bits come from NumPy's Philox, not its default PCG64, so a test that
assumed the CPU and the GPU draw the same numbers fails here as on a GPU.
"""
import numpy

from cupy import _standin


class Generator:
    def __init__(self, bit_generator):
        self._numpy = numpy.random.Generator(bit_generator)

    def __getattr__(self, name):
        entry = _standin.API["classes"]["cupy.random.Generator"].get(name)
        if entry is None or name.startswith("_"):
            raise AttributeError(f"'cupy.random.Generator' object has no attribute {name!r}")
        return _standin.function(f"Generator.{name}", getattr(self._numpy, name), entry["params"])


def default_rng(seed=None):
    return Generator(numpy.random.Philox(seed))


def __getattr__(name):
    return _standin.lookup("cupy.random", name, numpy.random)
