"""``cupy.linalg`` of the stand-in: NumPy's functions behind CuPy's names."""
import numpy

from cupy import _standin


def __getattr__(name):
    return _standin.lookup("cupy.linalg", name, numpy.linalg)
