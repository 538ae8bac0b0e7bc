"""``cupy.lib.stride_tricks`` of the stand-in."""
import numpy

from cupy import _standin


def as_strided(x, shape=None, strides=None):
    _standin.count_call()
    return _standin.wrap(numpy.lib.stride_tricks.as_strided(_standin.unwrap(x), shape, strides, writeable=False))


def sliding_window_view(x, window_shape, axis=None, *, subok=False, writeable=False):
    """As CuPy's: it puts ``window_shape`` on the device and tests each entry
    ``< 0`` in Python, one device->host sync per window axis."""
    window_shape = tuple(window_shape) if isinstance(window_shape, (tuple, list)) else (window_shape,)
    for _ in window_shape:
        _standin.count_sync()
    _standin.count_call()
    return _standin.wrap(numpy.lib.stride_tricks.sliding_window_view(_standin.unwrap(x), window_shape, axis=axis))
