"""The machinery of the CuPy stand-in: the recorded API, wrapping, and the counters.

Arrays cross between the stand-in and NumPy only through ``wrap``/``unwrap``:
``unwrap`` refuses a ``numpy.ndarray`` (CuPy does: no implicit host->device
copies), ``wrap`` refuses dtypes CuPy lacks (object, strings).

Two counters, keyed by the first call site outside the stand-in
("minclip/functional.py:120"):

* ``syncs``: device->host synchronisations (``float``, ``int``, ``bool``,
  ``.item()``, ``.get()``, ``.tolist()``, ``asnumpy``, boolean-mask indexing,
  CuPy's own ``sliding_window_view``, one per window axis);
* ``calls``: array-library calls (functions, methods, operators), each one or
  more kernel launches on a GPU. A ``cupy.fuse`` function counts as one.
"""
import collections
import contextlib
import functools
import json
import os
import sys
import threading

import numpy

API = json.loads(open(os.path.join(os.path.dirname(__file__), os.pardir, "cupy_api.json")).read())
VERSION = API["cupy_version"]
_SUPPORT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_REPOSITORY = os.path.dirname(os.path.dirname(_SUPPORT))    # call sites are named from here, whatever the cwd

syncs = collections.Counter()
calls = collections.Counter()
_local = threading.local()  # .fused > 0 inside a cupy.fuse function: its operations are one launch
                            # (per thread: thread-ranks run fused kernels at the same time)


def _in_fuse():
    return getattr(_local, "fused", 0) > 0


def reset():
    syncs.clear()
    calls.clear()


def _site():
    frame = sys._getframe(2)
    while frame.f_code.co_filename.startswith(_SUPPORT):
        frame = frame.f_back
    return f"{_relative(frame.f_code.co_filename)}:{frame.f_lineno}"


@functools.lru_cache(maxsize=None)
def _relative(path):
    return os.path.relpath(path, _REPOSITORY)


def count_call():
    if not _in_fuse():
        calls[_site()] += 1


def count_sync():
    syncs[_site()] += 1


@contextlib.contextmanager
def fused():
    _local.fused = getattr(_local, "fused", 0) + 1
    try:
        yield
    finally:
        _local.fused -= 1


def unwrap(value):
    """The NumPy array behind a stand-in value; a NumPy array is refused, as in CuPy."""
    from cupy import ndarray
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, numpy.ndarray):
        raise TypeError(f"Unsupported type {type(value)}")
    if isinstance(value, (list, tuple)):
        return type(value)(unwrap(v) for v in value)
    return value


def wrap(value):
    """NumPy results as stand-in arrays (a NumPy scalar becomes a 0-d array, as in CuPy)."""
    from cupy import ndarray
    if isinstance(value, (numpy.ndarray, numpy.generic)):
        value = numpy.asarray(value)
        if value.dtype.kind in "OUSVM":
            raise TypeError(f"Unsupported dtype {value.dtype}")
        array = ndarray.__new__(ndarray)
        array._a = value
        return array
    if isinstance(value, tuple):
        return tuple(wrap(v) for v in value)
    if isinstance(value, list):
        return [wrap(v) for v in value]
    return value


def check_keywords(name, params, kwargs):
    if params is None or "**" in params:
        return
    for key in kwargs:
        if key not in params:
            raise TypeError(f"{name}() got an unexpected keyword argument {key!r} "
                            f"(CuPy {VERSION} has none)")


def function(name, target, params, host_ok=False, fusable=False):
    """``target`` (a NumPy callable) behind CuPy's name and keywords.

    Inside a ``cupy.fuse`` function only ufuncs (``fusable``) and operators
    may run: the elementwise subset every fused kernel can compile.
    """
    def call(*args, **kwargs):
        if _in_fuse() and not fusable:
            raise TypeError(f"{name}() inside a cupy.fuse function: the stand-in allows only ufuncs and operators")
        check_keywords(name, params, kwargs)
        count_call()
        if host_ok:  # asarray & co: the explicit way from the host to the device
            args = [a if isinstance(a, numpy.ndarray) else unwrap(a) for a in args]
        else:
            args = unwrap(args)
        return wrap(target(*args, **{k: unwrap(v) for k, v in kwargs.items()}))
    return call


def lookup(module_name, name, numpy_namespace, host_ok=()):
    """The stand-in for ``module_name.name``: NumPy's object of that name, behind CuPy's API."""
    entry = API["modules"][module_name].get(name)
    if entry is None or entry["kind"] == "module" or not hasattr(numpy_namespace, name):
        raise AttributeError(f"module {module_name!r} has no attribute {name!r} "
                             f"(CuPy {VERSION}, or the stand-in, lacks it)")
    target = getattr(numpy_namespace, name)
    if entry["kind"] == "ufunc":
        from cupy import ufunc
        return ufunc(name, target, entry["params"])
    if entry["kind"] == "function":
        return function(f"{module_name}.{name}", target, entry["params"], host_ok=name in host_ok)
    return target  # dtypes, constants
