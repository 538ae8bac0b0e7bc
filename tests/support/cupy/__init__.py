"""A strict CPU stand-in for CuPy, for tests only (``PYTHONPATH=tests/support``).

It runs on NumPy but enforces CuPy's rules, so code that passes here makes no
NumPy-only assumption: ``ndarray`` wraps a NumPy array without being one,
``numpy.asarray(x)`` raises CuPy's TypeError, mixing with ``numpy.ndarray``
fails, ``.data`` is a device pointer, and only the names, methods and
keywords of the real CuPy exist (``cupy_api.json``, recorded from
``cupy-cuda12x`` by ``record_cupy_api.py``). It counts device->host syncs and
array-library calls per call site (``cupy._standin.syncs``/``.calls``).

What it cannot prove: the numerics and speed of CUDA kernels, memory limits,
and that a ``cupy.fuse`` function compiles (here it runs as plain Python).
"""
import functools

import numpy

from cupy import _standin
from cupy._standin import count_call, count_sync, unwrap, wrap

__version__ = _standin.VERSION
_HOST_OK = ("array", "asarray", "asanyarray")  # the explicit host->device copies


class ndarray:
    """A device array: a NumPy array inside, CuPy's interface outside."""

    __slots__ = ("_a",)
    __array_ufunc__ = None  # numpy ufuncs and operators refuse it, as in CuPy
    __hash__ = None

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        self._a = numpy.empty(shape, dtype, order=order)

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    @property
    def __cuda_array_interface__(self):
        return {"shape": self._a.shape, "typestr": self._a.dtype.str, "version": 3,
                "data": (self._a.ctypes.data, False), "strides": self._a.strides}

    @property
    def data(self):
        return cuda.MemoryPointer(self._a.ctypes.data)

    @property
    def device(self):
        return cuda.Device(0)

    def get(self, stream=None, order="C", out=None, blocking=True):
        count_sync()
        return numpy.array(self._a, order=order)

    def set(self, arr, stream=None):
        count_call()
        self._a[...] = arr

    def item(self):
        count_sync()
        return self._a.item()

    def tolist(self):
        count_sync()
        return self._a.tolist()

    def __float__(self):
        count_sync()
        return float(self._a)

    def __int__(self):
        count_sync()
        return int(self._a)

    def __bool__(self):
        count_sync()
        return bool(self._a)

    def __complex__(self):
        count_sync()
        return complex(self._a)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (wrap(row) for row in self._a)

    def __getitem__(self, key):
        key = _index(key)
        if any(getattr(k, "dtype", None) == bool for k in (key if isinstance(key, tuple) else (key,))):
            count_sync()  # the result's size lives on the device
        count_call()
        return wrap(self._a[key])

    def __setitem__(self, key, value):
        count_call()
        self._a[_index(key)] = unwrap(value)

    def __copy__(self):
        count_call()
        return wrap(self._a.copy())

    def __deepcopy__(self, memo):
        return self.__copy__()

    def __repr__(self):
        return repr(self._a)

    def __str__(self):
        return str(self._a)

    def __getattr__(self, name):
        entry = _standin.API["classes"]["cupy.ndarray"].get(name)
        if entry is None or name.startswith("_"):
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")
        value = getattr(self._a, name)
        if entry["kind"] == "function":
            return _standin.function(f"ndarray.{name}", value, entry["params"])
        return wrap(value)


def _index(key):
    """An index: CuPy copies NumPy index arrays to the device, so they pass here."""
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    return key if isinstance(key, numpy.ndarray) else unwrap(key)


def _operator(name):
    def method(self, *args):
        count_call()
        result = getattr(self._a, name)(*(unwrap(a) for a in args))
        if result is NotImplemented:
            return result
        return self if result is self._a else wrap(result)      # an in-place operator gives its own array back
    method.__name__ = name
    return method


for _name in _standin.API["classes"]["cupy.ndarray"]["__dunders__"]["names"]:
    if _name not in vars(ndarray) and _name[2:-2] in (
            "add sub mul truediv floordiv mod pow matmul and or xor lshift rshift divmod "
            "radd rsub rmul rtruediv rfloordiv rmod rpow rmatmul rand ror rxor rlshift rrshift rdivmod "
            "iadd isub imul itruediv ifloordiv imod ipow iand ior ixor ilshift irshift "
            "neg pos abs invert eq ne lt le gt ge").split():
        setattr(ndarray, _name, _operator(_name))


class ufunc:
    """A CuPy ufunc: NumPy's, with CuPy's keywords and methods only."""

    def __init__(self, name, target, params):
        self.__name__, self._target, self._params = name, target, params
        self._call = _standin.function(f"cupy.{name}", target, params, fusable=True)

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def __getattr__(self, name):
        entry = _standin.API["classes"]["cupy.ufunc"].get(name)
        if entry is None or name.startswith("_"):
            raise AttributeError(f"'cupy.ufunc' object has no attribute {name!r}")
        if entry["kind"] == "function":
            return _standin.function(f"cupy.{self.__name__}.{name}", getattr(self._target, name), entry["params"])
        return getattr(self._target, name)


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    if isinstance(a, ndarray):
        return a.get(order=order)
    return numpy.asarray(a, order=order)


def get_array_module(*args):
    return __import__("cupy") if any(isinstance(a, ndarray) for a in args) else numpy


def fuse(*args, **kwargs):
    """``@cupy.fuse()``: here the function runs as plain Python, counted as one launch."""
    def decorate(fn):
        @functools.wraps(fn)
        def fused(*a, **kw):
            count_call()
            with _standin.fused():
                return fn(*a, **kw)
        return fused
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return decorate(args[0])
    return decorate


def __getattr__(name):
    value = _standin.lookup("cupy", name, numpy, host_ok=_HOST_OK)
    globals()[name] = value
    return value


import cupy.cuda as cuda  # noqa: E402  (the submodules use ndarray)
import cupy.lib as lib  # noqa: E402
import cupy.linalg as linalg  # noqa: E402
import cupy.random as random  # noqa: E402
