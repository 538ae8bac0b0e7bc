"""The array backend: NumPy on the CPU, CuPy on an NVIDIA GPU.

Every compute file in minclip writes ``xp.exp(x)`` instead of ``np.exp(x)``.
``xp`` is a small proxy that forwards each attribute to the active library,
so the *same lines* run on NumPy or CuPy::

    from minclip.backend import xp, set_backend
    set_backend("cupy")       # or MINCLIP_BACKEND=cupy in the environment
    xp.zeros((2, 3))          # a cupy.ndarray now

One spelling per meaning, everywhere in minclip:

* ``xp`` (imported from here, never rebound) is *the active backend*: use it
  to make arrays from nothing (parameters, masks, buffers).
* Code given arrays follows *their* library, so that a tensor moved with
  ``.to("numpy")`` stays there even if the default changes:
  ``array_module(a)`` for an array, ``t.xp`` for a Tensor (the same thing).
  Call it where it is needed, or bind it to ``lib``
  (``lib = array_module(g)``), never to ``xp``.

Everything that *differs* between NumPy and CuPy lives here, once:
scatter-add (``np.add.at`` vs ``cupyx.scatter_add``), sliding-window views
(stride tricks), random number generation, and host copies (``to_numpy``).
"""
import contextlib
import math
import os

import numpy

_NAMES = ("numpy", "cupy")
_backend_name = "numpy"
_module = numpy


class BackendError(RuntimeError):
    """The requested backend cannot be used on this machine."""


def _import_cupy():
    """Import CuPy and check that a GPU is usable, or raise one clear BackendError."""
    try:
        import cupy
    except ImportError:
        raise BackendError(
            "backend 'cupy' needs CuPy, which is not installed: "
            "pip install cupy-cuda12x (or cupy-cuda13x for CUDA 13)") from None
    try:
        available = cupy.cuda.is_available()
    except Exception:  # a broken driver raises instead of answering False
        available = False
    if not available:
        raise BackendError("backend 'cupy' needs an NVIDIA GPU, and CuPy finds none "
                           "on this machine: use --backend numpy")
    return cupy


def set_backend(name):
    """Make ``name`` ("numpy" or "cupy") the backend for new arrays."""
    global _backend_name, _module
    if name not in _NAMES:
        raise ValueError(f"unknown backend {name!r}: choose one of {_NAMES}")
    _module = numpy if name == "numpy" else _import_cupy()
    _backend_name = name


def get_backend():
    """The name of the active backend: "numpy" or "cupy"."""
    return _backend_name


class _ArrayNamespace:
    """``xp``: forwards ``xp.anything`` to the active array library."""

    def __getattr__(self, attr):
        return getattr(_module, attr)

    def __repr__(self):
        return f"<minclip xp -> {_backend_name}>"


xp = _ArrayNamespace()


def array_module(array):
    """The library (numpy or cupy) that owns ``array``."""
    if isinstance(array, numpy.ndarray) or numpy.isscalar(array):
        return numpy
    if type(array).__module__.startswith("cupy"):
        import cupy
        return cupy
    return numpy


def backend_name(array):
    """ "numpy" or "cupy", for the library that owns ``array``."""
    return "numpy" if array_module(array) is numpy else "cupy"


def asarray(data, dtype=None):
    """Put ``data`` (list, NumPy or CuPy array, scalar) on the active backend."""
    return _module.asarray(data, dtype=dtype)


def to_array(data, dtype=None):
    """``data`` as an array of the active backend: the way in for Python values.

    Lists and scalars of Python floats become float32 (as in PyTorch) unless
    ``dtype`` says otherwise; arrays keep their dtype.
    """
    if hasattr(data, "__array__") or hasattr(data, "__cuda_array_interface__"):
        if _module is numpy:
            data = to_numpy(data)
        return _module.asarray(data, dtype=dtype)
    array = numpy.asarray(data, dtype=dtype)
    if dtype is None and array.dtype == numpy.float64:
        array = array.astype(numpy.float32)
    return _module.asarray(array)


def ensure_array(value):
    """A 0-d array for a NumPy scalar (what NumPy's full reductions return)."""
    return numpy.asarray(value) if isinstance(value, numpy.generic) else value


def move(array, name):
    """``array`` on backend ``name`` ("numpy" or "cupy"), copied between host and GPU if needed."""
    if name == "numpy":
        return to_numpy(array)
    if name == "cupy":
        return _import_cupy().asarray(array)
    raise ValueError(f"unknown backend {name!r}: choose one of {_NAMES}")


def value_range(array):
    """(min, max) of a non-empty array as Python numbers: free on the host, one
    device-to-host copy for both on a GPU. An empty array gives (0, -1)."""
    if array.size == 0:
        return 0, -1
    extremes = array_module(array).stack([array.min(), array.max()])
    low, high = to_numpy(extremes).tolist()
    return low, high


def ignore_overflow():
    """Context manager silencing NumPy's overflow warning (CuPy never warns)."""
    return numpy.errstate(over="ignore")


def to_numpy(array):
    """A NumPy copy of ``array`` on the host (no copy if it already is NumPy)."""
    if isinstance(array, numpy.ndarray):
        return array
    if hasattr(array, "get"):  # cupy.ndarray
        return array.get()
    return numpy.asarray(array)


# ---------------------------------------------------------------- randomness
#
# NumPy's and CuPy's generators differ (PCG64 on the host, XORWOW on the GPU)
# and CuPy's exposes no state to save. So minclip's randomness is a seed plus
# a count of draws: draw n uses a fresh generator keyed by (seed, n). The
# state is two integers, the same on both backends, and a checkpoint saved on
# one resumes on the other (with that backend's numbers).

_seed, _draws = 0, 0


def seed(value):
    """Seed minclip's random numbers (initializers, dropout) and restart the count."""
    global _seed, _draws
    _seed, _draws = int(value), 0


def rng():
    """A generator of the active backend for one draw (the next key of the seed)."""
    global _draws
    key = numpy.random.SeedSequence((_seed, _draws)).generate_state(1, numpy.uint64)[0]
    _draws += 1
    return _module.random.default_rng(int(key))


def get_rng_state():
    """The random state as a JSON-friendly dict, for checkpoints (any backend)."""
    return {"seed": _seed, "draws": _draws}


def set_rng_state(state):
    """Restore a state saved by ``get_rng_state``, on either backend."""
    global _seed, _draws
    if not isinstance(state, dict) or set(state) != {"seed", "draws"}:
        raise ValueError(f"random state: expected {{'seed': int, 'draws': int}}, got {state!r:.80}")
    _seed, _draws = int(state["seed"]), int(state["draws"])


# ----------------------------------------------------- NumPy/CuPy differences

def scatter_add(target, indices, values):
    """``target[indices] += values``, adding repeated indices up (in place).

    Plain ``target[idx] += v`` keeps only one of several writes to the same
    place; NumPy spells the accumulating version ``np.add.at``, CuPy
    ``cupyx.scatter_add``.
    """
    if array_module(target) is numpy:
        numpy.add.at(target, indices, values)
    else:
        import cupyx
        cupyx.scatter_add(target, indices, values)
    return target


def sliding_window_view(x, window_shape, axis):
    """A read-only strided view of every window (no copy), as NumPy's function."""
    if array_module(x) is numpy:
        return numpy.lib.stride_tricks.sliding_window_view(x, window_shape, axis=axis)
    # CuPy's own copies window_shape to the GPU and checks it there, one sync per
    # axis on every call: the same view, from strides computed on the host.
    import cupy
    axis = tuple(a % x.ndim for a in axis)
    shape = list(x.shape)
    for a, w in zip(axis, window_shape):
        shape[a] -= w - 1
    strides = x.strides + tuple(x.strides[a] for a in axis)
    return cupy.lib.stride_tricks.as_strided(x, shape=tuple(shape) + tuple(window_shape), strides=strides)


_plain_only = False


@contextlib.contextmanager
def plain_paths():
    """Context manager: every op runs its plain formula, none of the fast paths beside it.

    Several ops keep a fast path next to their plain (course) formula: fused
    GPU kernels (``elementwise``) and, on NumPy, passes over cache-sized row
    blocks spread over threads (``minclip.blocked``). Tests compare the two
    under this switch, and the tests of an exercise run under it, so that
    they grade the learner's formula and not the fast path beside it.
    """
    global _plain_only
    previous, _plain_only = _plain_only, True
    try:
        yield
    finally:
        _plain_only = previous


def fast_paths():
    """False inside ``plain_paths()``: whether an op may take its fast path."""
    return not _plain_only


def fused(array):
    """Whether an op on ``array`` takes its fused GPU kernels: on CuPy, outside ``plain_paths()``."""
    return not _plain_only and array_module(array) is not numpy


def elementwise(fn):
    """Decorator for a chain of elementwise math, written once for both backends.

    ``fn`` uses only operators and the ufuncs of its arrays' own module
    (``array_module(x).exp``). On CuPy it is compiled by ``cupy.fuse`` into
    one GPU kernel, instead of one launch and one temporary array per
    operation; on NumPy it runs as written (callers keep a faster in-place
    NumPy path where they have one, and tests compare the two). Numbers
    passed in should be NumPy scalars of the arrays' dtype
    (``x.dtype.type(1.702)``), so float32 stays float32.
    """
    fused = []  # compiled on first use, so that importing minclip never imports CuPy

    def call(*args):
        if array_module(args[0]) is numpy:
            return fn(*args)
        if not fused:
            import cupy
            fused.append(cupy.fuse(kernel_name=fn.__name__)(fn))
        return fused[0](*args)

    call.__name__, call.__doc__ = fn.__name__, fn.__doc__
    return call


def erf(x):
    """The error function, elementwise (for the exact GELU).

    CuPy has it in ``cupyx.scipy.special``. NumPy has none, and minclip does
    not depend on SciPy, so the NumPy path applies Python's exact ``math.erf``
    to each element: correct to the last bit, but slower than a ufunc. OpenAI's
    weights use QuickGELU, which needs no erf.
    """
    if array_module(x) is numpy:
        return numpy.asarray(_numpy_erf(x), dtype=x.dtype)  # a 0-d input gives a bare float
    import cupyx.scipy.special
    return cupyx.scipy.special.erf(x)


_numpy_erf = numpy.frompyfunc(math.erf, 1, 1)


class _Unusable:
    """The array library of a backend that MINCLIP_BACKEND named but that cannot be used
    here: any use raises the reason, as one BackendError line."""

    def __init__(self, reason):
        self.reason = reason

    def __getattr__(self, attr):
        raise BackendError(self.reason)


def _from_environment():
    """MINCLIP_BACKEND picks the backend at import. One that cannot be used (no CuPy, no
    GPU, a misspelling) does not break ``import minclip``: the first array made on it
    raises the reason, and a command-line tool, whose ``--backend`` defaults to it,
    stops with that line. ``set_backend("numpy")`` goes back to NumPy."""
    global _backend_name, _module
    name = os.environ.get("MINCLIP_BACKEND")
    if not name:
        return
    try:
        set_backend(name)
    except (BackendError, ValueError) as error:
        _backend_name, _module = name, _Unusable(f"MINCLIP_BACKEND={name}: {error}")


_from_environment()
