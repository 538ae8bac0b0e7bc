"""``cupyx.scipy.special`` of the stand-in: ``erf`` (Python's, elementwise)."""
import math

import numpy

from cupy import _standin

_erf = numpy.frompyfunc(math.erf, 1, 1)


def erf(x):
    _standin.count_call()
    a = _standin.unwrap(x)
    return _standin.wrap(numpy.asarray(_erf(a), dtype=a.dtype))
