"""Joining and choosing: ``concatenate``, ``stack``, ``where``, ``masked_fill``."""
import itertools

from minclip.backend import array_module
from minclip.tensor import Function, Tensor, unbroadcast


def _tensor(x):
    return x if isinstance(x, Tensor) else Tensor(x)


class ConcatenateFunction(Function):
    def forward(self, *arrays, axis):
        self.axis = axis
        self.splits = [a.shape[axis] for a in arrays]
        return array_module(arrays[0]).concatenate(arrays, axis=axis)

    def backward(self, g):
        edges = list(itertools.accumulate(self.splits[:-1]))       # where each input ends
        return tuple(array_module(g).split(g, edges, axis=self.axis))


def concatenate(tensors, axis=0):
    """Join tensors along an existing axis; the gradient is split back."""
    return ConcatenateFunction.apply(*[_tensor(t) for t in tensors], axis=axis)


def stack(tensors, axis=0):
    """Join tensors along a new axis."""
    tensors = [_tensor(t) for t in tensors]
    shape = tensors[0].shape
    axis = axis % (len(shape) + 1)
    expanded = [t.reshape(shape[:axis] + (1,) + shape[axis:]) for t in tensors]
    return concatenate(expanded, axis=axis)


class WhereFunction(Function):
    def forward(self, a, b, condition):
        self.condition, self.shapes = condition, (a.shape, b.shape)
        return array_module(a).where(condition, a, b)

    def backward(self, g):
        zero = g.dtype.type(0)
        lib = array_module(g)
        return (unbroadcast(lib.where(self.condition, g, zero), self.shapes[0]),
                unbroadcast(lib.where(self.condition, zero, g), self.shapes[1]))


def where(condition, a, b):
    """``a`` where ``condition`` is true, else ``b`` (condition is not differentiated).

    A scalar ``a`` or ``b`` takes the dtype of the other (no upcast).
    """
    condition = condition.data if isinstance(condition, Tensor) else condition
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        a = Tensor(a)
    a = a if isinstance(a, Tensor) else b._wrap(a)
    b = b if isinstance(b, Tensor) else a._wrap(b)
    return WhereFunction.apply(a, b, condition=a.xp.asarray(condition))  # a host mask goes to the device


def masked_fill(x, mask, value):
    """``x`` with ``value`` wherever ``mask`` is true (e.g. -inf above a causal diagonal)."""
    return where(mask, x._wrap(value), x)
