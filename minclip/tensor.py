"""A Tensor with reverse-mode automatic differentiation.

The whole engine is two classes:

* ``Function``: one differentiable op. ``forward`` computes the output from
  plain arrays and saves what ``backward`` will need; ``backward`` turns the
  gradient of the loss with respect to the output into gradients with respect
  to each input (the chain rule, one op at a time).
* ``Tensor``: an array plus ``grad``, ``requires_grad`` and ``_ctx``, the
  Function that made it. Following ``_ctx`` and each Function's ``parents``
  back from a loss gives the graph. The graph holds an op's output as its
  ``Node`` (the same graph attributes, without the array), so it keeps no
  intermediate array alive that no backward needs.

``loss.backward()`` orders the graph topologically (iteratively, so a chain
of 10,000 ops does not hit Python's recursion limit), walks it from the loss
back to the leaves, and adds each gradient into the leaves' ``.grad``
(accumulating across calls, as in PyTorch). Each op's saved arrays are
released as soon as its backward has run.

The elementwise and shape ops live here, as Tensor methods (``AddFunction``
behind ``a + b``, ...); every other differentiable function (softmax, layer
norm, conv2d, ...) lives in ``minclip.functional``, the index of them all.
"""
import math
import numbers
from abc import ABC, abstractmethod

from minclip import backend
from minclip.backend import array_module, backend_name

_grad_enabled = True


class no_grad:
    """Context manager: inside it no graph is recorded (evaluation, updates).

    >>> with no_grad():
    ...     y = model(x)          # y.requires_grad is False, nothing saved
    """

    def __enter__(self):
        global _grad_enabled
        self._previous, _grad_enabled = _grad_enabled, False

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._previous


def is_grad_enabled():
    return _grad_enabled


def _is_float(array):
    return array.dtype.kind == "f"


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the backward of broadcasting.

    If ``x`` of shape (3, 1) was broadcast to (5, 3, 4), each element of x was
    used 5·4 times, so its gradient is the sum over the new leading axis and
    over the stretched axis of size 1.
    """
    # BEGIN EXERCISE 2.4: The backward of broadcasting
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    stretched = tuple(extra + i for i, n in enumerate(shape) if n == 1 and grad.shape[extra + i] != 1)
    summed = grad.sum(axis=tuple(range(extra)) + stretched, keepdims=True)
    return summed.reshape(shape)
    # END EXERCISE


class Function(ABC):
    """Base class of every differentiable op.

    Subclasses define ``forward(self, *arrays, **options) -> array`` and
    ``backward(self, grad) -> tuple`` (one gradient per input, ``None`` for an
    input that needs none). ``Function.apply(*tensors, **options)`` runs
    forward and, when any input requires a gradient, records the op in the graph.
    """

    @classmethod
    def apply(cls, *inputs, **options):
        fn = cls()
        _check_same_backend(cls.__name__, inputs)
        fn.needs_grad = tuple(t.requires_grad for t in inputs)
        out = fn.forward(*(t.data for t in inputs), **options)
        out = backend.ensure_array(out)  # NumPy reductions return scalars: keep 0-d arrays
        if not (_grad_enabled and any(fn.needs_grad)):
            return Tensor.from_array(out)
        fn.parents = tuple(t._node or t for t in inputs)   # leaves as they are, op outputs as their Node
        return Tensor.from_op(out, fn)

    @abstractmethod
    def forward(self, *arrays, **options):
        """Compute the output array (and save what backward needs on ``self``)."""

    @abstractmethod
    def backward(self, grad):
        """Given dL/d(output), return dL/d(input) for each input."""


def _check_same_backend(op_name, tensors):
    names = {backend_name(t.data) for t in tensors}
    if len(names) > 1:
        shapes = ", ".join(f"{backend_name(t.data)} {t.shape}" for t in tensors)
        raise ValueError(f"{op_name}: inputs live on different backends ({shapes}); "
                         f"move them with .to('numpy') or .to('cupy') first")


class Node:
    """An op's output as the graph keeps it: the graph half of a Tensor, without the array.

    ``fn.parents`` holds, for each input of an op, the leaf Tensor itself
    (backward fills in its ``.grad``) or, for the output of an earlier op,
    that output's Node: ``requires_grad``, ``grad``, ``_ctx`` and the flags
    that backward reads and writes, and the shape and dtype for display. The
    Tensor you hold reads and writes those same attributes on its Node. So the
    graph never keeps an intermediate array alive: an activation lives as long
    as you hold its Tensor or an op saved it for its backward. (Holding the
    Tensors instead kept every residual sum and projection of a ViT training
    step alive until backward, about a quarter of its memory. PyTorch's graph
    likewise holds nodes, not tensors.)
    """

    def __init__(self, fn, shape, dtype):
        self.requires_grad, self.grad, self._ctx = True, None, fn
        self._retain_grad = self._graph_freed = False
        self.shape, self.dtype = shape, dtype

    def __repr__(self):
        return f"Node({type(self._ctx).__name__ if self._ctx else 'freed'}, shape={self.shape})"


def _graph_attribute(name):
    """Tensor.<name>: on the Tensor itself, or on its Node when it is an op's output."""

    def get(self):
        node = self.__dict__["_node"]
        return self.__dict__[name] if node is None else getattr(node, name)

    def set(self, value):
        node = self.__dict__["_node"]
        if node is None:
            self.__dict__[name] = value
        else:
            setattr(node, name, value)
    return property(get, set)


class Tensor:
    """An n-dimensional array that can record how it was computed.

    ``Tensor(data, requires_grad=False)``: ``data`` may be a list, a scalar or
    a NumPy/CuPy array; it is placed on the active backend. Python floats and
    lists of floats become float32 (as in PyTorch); arrays keep their dtype,
    so a float64 array gives a float64 tensor (used for gradient checks).

    Two named constructors skip that conversion, for arrays that are already
    on the backend: ``Tensor.from_array`` and ``Tensor.from_op``.
    """

    __array_ufunc__ = None  # make `ndarray * Tensor` call Tensor.__rmul__

    def __init__(self, data, requires_grad=False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        self._set(backend.to_array(data, dtype), requires_grad)

    @classmethod
    def from_array(cls, array, requires_grad=False):
        """Wrap an array of the active backend as it is: no copy, no change of dtype."""
        tensor = cls.__new__(cls)
        tensor._set(array, requires_grad)
        return tensor

    @classmethod
    def from_op(cls, array, fn):
        """The output ``array`` of the Function ``fn``: it requires a grad, and ``fn`` is its place in the graph."""
        tensor = cls.from_array(array, requires_grad=True)
        tensor._node = Node(fn, array.shape, array.dtype)
        return tensor

    def _set(self, data, requires_grad):
        self._node = None               # an op's output gets its Node in from_op
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._ctx = None
        self._retain_grad = False
        self._graph_freed = False

    # ------------------------------------------------------------ properties
    grad, _ctx = _graph_attribute("grad"), _graph_attribute("_ctx")
    _retain_grad, _graph_freed = _graph_attribute("_retain_grad"), _graph_attribute("_graph_freed")
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    xp = property(lambda self: array_module(self.data), doc="numpy or cupy, for this tensor")
    is_leaf = property(lambda self: self._ctx is None)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.data!r}{grad})"

    def numpy(self):
        """The data as a NumPy array on the host (a copy from the GPU)."""
        return backend.to_numpy(self.data)

    def item(self):
        return self.data.item()

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor.from_array(self.data)

    def zero_grad(self):
        self.grad = None

    def retain_grad(self):
        """Keep ``.grad`` on this non-leaf tensor after backward (for inspection)."""
        self._retain_grad = True

    def to(self, name):
        """A copy on backend ``name`` ("numpy" or "cupy")."""
        return Tensor.from_array(backend.move(self.data, name), requires_grad=self.requires_grad)

    def astype(self, dtype):
        """Cast to ``dtype`` (differentiable: the gradient is cast back)."""
        return CastFunction.apply(self, dtype=dtype)

    # -------------------------------------------------------------- backward
    def backward(self, grad=None, retain_graph=False):
        """Backpropagate from this tensor to every leaf that requires a grad.

        ``grad`` is dL/d(self); it defaults to 1 for a scalar. Leaf tensors
        accumulate into ``.grad``. Unless ``retain_graph``, each op drops its
        saved arrays after use, so the graph does not outlive this call.
        A RuntimeError says why when ``self`` needs no gradient, or when
        ``grad`` is omitted for a tensor that is not a scalar.
        """
        # BEGIN EXERCISE 2.3: The backward pass
        if not self.requires_grad:
            raise RuntimeError("backward(): this tensor does not require grad "
                               "(no input had requires_grad=True, or it was made under no_grad)")
        if self._graph_freed:
            raise RuntimeError("backward(): this graph was already freed by an earlier backward(); "
                               "pass retain_graph=True to the first call to go through it twice")
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward(): grad can be implicit only for a scalar, "
                                   f"got shape {self.shape}; pass grad=")
            grad = self.xp.ones(self.shape, dtype=self.dtype)
        grad = backend.move(grad.data if isinstance(grad, Tensor) else grad, backend_name(self.data))
        grads = {id(self): grad}
        for node in reversed(_topological_order(self)):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            fn = node._ctx
            if fn is None or node._retain_grad:
                node.grad = g.copy() if node.grad is None else node.grad + g
            if fn is None:
                continue
            for parent, parent_grad in zip(fn.parents, fn.backward(g)):
                if parent_grad is None or not parent.requires_grad:
                    continue
                key = id(parent)
                grads[key] = parent_grad if key not in grads else grads[key] + parent_grad
            if not retain_graph:
                node._ctx = None  # frees the op and the arrays it saved
                node._graph_freed = True
        # END EXERCISE

    # ------------------------------------------------------------ arithmetic
    def _wrap(self, other):
        """Turn a scalar or array into a Tensor with this tensor's float dtype (no upcast)."""
        if isinstance(other, Tensor):
            return other
        dtype = self.dtype if _is_float(self.data) else None
        return Tensor.from_array(self.xp.asarray(other, dtype=dtype))

    def __add__(self, other):
        return AddFunction.apply(self, self._wrap(other))

    def __radd__(self, other):
        return AddFunction.apply(self._wrap(other), self)

    def __sub__(self, other):
        return SubFunction.apply(self, self._wrap(other))

    def __rsub__(self, other):
        return SubFunction.apply(self._wrap(other), self)

    def __mul__(self, other):
        return MulFunction.apply(self, self._wrap(other))

    def __rmul__(self, other):
        return MulFunction.apply(self._wrap(other), self)

    def __truediv__(self, other):
        return DivFunction.apply(self, self._wrap(other))

    def __rtruediv__(self, other):
        return DivFunction.apply(self._wrap(other), self)

    def __matmul__(self, other):
        return MatMulFunction.apply(self, self._wrap(other))

    def __rmatmul__(self, other):
        return MatMulFunction.apply(self._wrap(other), self)

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor):
            raise TypeError("Tensor ** Tensor is not supported: the exponent must be a number")
        return PowFunction.apply(self, exponent=exponent)

    def __neg__(self):
        return NegFunction.apply(self)

    def __getitem__(self, index):
        return GetItemFunction.apply(self, index=_plain_index(index))

    # comparisons give plain (non-differentiable) boolean tensors
    def _compare(self, other, op):
        other = other.data if isinstance(other, Tensor) else other
        return Tensor.from_array(op(self.data, other))

    def __lt__(self, other):
        return self._compare(other, lambda a, b: a < b)

    def __le__(self, other):
        return self._compare(other, lambda a, b: a <= b)

    def __gt__(self, other):
        return self._compare(other, lambda a, b: a > b)

    def __ge__(self, other):
        return self._compare(other, lambda a, b: a >= b)

    def eq(self, other):
        """Elementwise ==, as a boolean tensor (``==`` itself keeps Python's identity meaning)."""
        return self._compare(other, lambda a, b: a == b)

    __hash__ = object.__hash__

    # ------------------------------------------------------------ reductions
    def sum(self, axis=None, keepdims=False):
        return SumFunction.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        count = self.size if axis is None else math.prod(self.shape[a] for a in _axes(axis))
        return self.sum(axis=axis, keepdims=keepdims) * (1.0 / int(count))

    def max(self, axis=None, keepdims=False):
        return MaxFunction.apply(self, axis=axis, keepdims=keepdims)

    # ---------------------------------------------------------------- shapes
    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return ReshapeFunction.apply(self, shape=tuple(shape))

    def transpose(self, *axes):
        """Permute axes (all of them reversed when none are given), as NumPy."""
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return TransposeFunction.apply(self, axes=tuple(axes) if axes else None)

    @property
    def T(self):
        return self.transpose()

    def swapaxes(self, a, b):
        axes = list(range(self.ndim))
        axes[a], axes[b] = axes[b], axes[a]
        return self.transpose(axes)

    # ---------------------------------------------------------- elementwise
    def exp(self):
        return ExpFunction.apply(self)

    def log(self):
        return LogFunction.apply(self)

    def sqrt(self):
        return SqrtFunction.apply(self)

    def tanh(self):
        return TanhFunction.apply(self)

    def sigmoid(self):
        return SigmoidFunction.apply(self)

    def relu(self):
        return ReLUFunction.apply(self)


def _axes(axis):
    return axis if isinstance(axis, tuple) else (axis,)


def _plain_index(index):
    """Replace Tensors inside an index by their arrays."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


def _topological_order(root):
    """Every tensor that ``root`` depends on (and needs a grad), inputs before outputs.

    An iterative depth-first search: a node is appended after all its
    parents, so walking the list backwards visits each node only after every
    node that uses it has passed its gradient down.
    """
    # BEGIN EXERCISE 2.2: Topological order of the graph
    order, visited, stack = [], set(), [(root, False)]
    while stack:
        node, parents_done = stack.pop()
        if parents_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if node._ctx is not None:
            for parent in node._ctx.parents:
                if parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
    return order
    # END EXERCISE


# ================================================================ the ops

class AddFunction(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, g):
        return unbroadcast(g, self.shapes[0]), unbroadcast(g, self.shapes[1])


class SubFunction(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a - b

    def backward(self, g):
        return unbroadcast(g, self.shapes[0]), unbroadcast(-g, self.shapes[1])


class MulFunction(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):
        a, b = self.a, self.b
        ga = unbroadcast(g * b, a.shape) if self.needs_grad[0] else None
        gb = unbroadcast(g * a, b.shape) if self.needs_grad[1] else None
        return ga, gb


class DivFunction(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, g):
        a, b = self.a, self.b
        ga = unbroadcast(g / b, a.shape) if self.needs_grad[0] else None
        gb = unbroadcast(-g * a / (b * b), b.shape) if self.needs_grad[1] else None
        return ga, gb


class NegFunction(Function):
    def forward(self, a):
        return -a

    def backward(self, g):
        return (-g,)


class PowFunction(Function):
    """x ** p for a constant p: d/dx = p · x^(p-1)."""

    def forward(self, a, exponent):
        if _is_float(a):  # np.float64(2) would otherwise upcast a float32 tensor
            exponent = a.dtype.type(exponent)
        self.a, self.p = a, exponent
        return a ** exponent

    def backward(self, g):
        return (g * self.p * self.a ** (self.p - 1),)


class MatMulFunction(Function):
    """a @ b with NumPy's rules (batched, broadcast, 1-D vectors).

    For C = A·B: dL/dA = dL/dC · Bᵀ and dL/dB = Aᵀ · dL/dC, summed over any
    broadcast batch axes.
    """

    def forward(self, a, b):
        self.a, self.b = a, b
        return a @ b

    def backward(self, g):
        """dL/da = g @ bᵀ, dL/db = aᵀ @ g, each unbroadcast to its input's shape (a 1-D input
        is a row or a column, as in ``a @ b``)."""
        # BEGIN EXERCISE 2.5: Matrix multiplication backward
        a, b = self.a, self.b
        if a.ndim == 1 and b.ndim == 1:
            return g * b, g * a
        a2 = a[None, :] if a.ndim == 1 else a        # vectors become matrices
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g[..., None, :] if a.ndim == 1 else g
        g2 = g2[..., None] if b.ndim == 1 else g2
        ga = gb = None
        if self.needs_grad[0]:
            ga = unbroadcast(g2 @ b2.swapaxes(-1, -2), a2.shape).reshape(a.shape)
        if self.needs_grad[1]:
            gb = unbroadcast(a2.swapaxes(-1, -2) @ g2, b2.shape).reshape(b.shape)
        return ga, gb
        # END EXERCISE


class CastFunction(Function):
    def forward(self, a, dtype):
        self.dtype = a.dtype
        return a.astype(dtype)

    def backward(self, g):
        return (g.astype(self.dtype),)


class GetItemFunction(Function):
    """x[index]: the gradient flows back into the selected places.

    Advanced (integer-array) indexing may select a place twice, so its
    backward must *add* (scatter-add), not assign.
    """

    def forward(self, a, index):
        self.shape, self.dtype, self.index = a.shape, a.dtype, index
        return a[index]

    def backward(self, g):
        lib = array_module(g)
        grad = lib.zeros(self.shape, dtype=self.dtype)
        if _is_basic_index(self.index):
            grad[self.index] = g
        else:
            backend.scatter_add(grad, self.index, g)
        return (grad,)


def _is_basic_index(index):
    items = index if isinstance(index, tuple) else (index,)
    return all(i is None or i is Ellipsis or isinstance(i, (numbers.Integral, slice)) for i in items)


class SumFunction(Function):
    def forward(self, a, axis, keepdims):
        self.shape, self.axis, self.keepdims = a.shape, axis, keepdims
        return a.sum(axis=axis, keepdims=keepdims)

    def backward(self, g):
        lib = array_module(g)
        if self.axis is not None and not self.keepdims:
            g = lib.expand_dims(g, self.axis)
        return (lib.broadcast_to(g, self.shape),)


class MaxFunction(Function):
    """The maximum; its gradient is shared equally between tied maxima (as torch.amax)."""

    def forward(self, a, axis, keepdims):
        self.a, self.axis, self.keepdims = a, axis, keepdims
        self.out = a.max(axis=axis, keepdims=True)
        if keepdims:
            return self.out
        return self.out.reshape(()) if axis is None else self.out.squeeze(axis)

    def backward(self, g):
        mask = (self.a == self.out).astype(g.dtype)
        mask /= mask.sum(axis=self.axis, keepdims=True)
        if not self.keepdims:
            g = g.reshape(self.out.shape)
        return (mask * g,)


class ReshapeFunction(Function):
    def forward(self, a, shape):
        self.shape = a.shape
        return a.reshape(shape)

    def backward(self, g):
        return (g.reshape(self.shape),)


class TransposeFunction(Function):
    def forward(self, a, axes):
        out = a.transpose(axes)
        self.axes = None if axes is None else tuple(ax % a.ndim for ax in axes)  # -1 -> ndim-1 for argsort
        return out

    def backward(self, g):
        if self.axes is None:
            return (g.transpose(),)
        inverse = sorted(range(len(self.axes)), key=self.axes.__getitem__)  # argsort of the axes
        return (g.transpose(inverse),)


class ExpFunction(Function):
    def forward(self, a):
        self.out = array_module(a).exp(a)
        return self.out

    def backward(self, g):
        return (g * self.out,)


class LogFunction(Function):
    def forward(self, a):
        self.a = a
        return array_module(a).log(a)

    def backward(self, g):
        return (g / self.a,)


class SqrtFunction(Function):
    def forward(self, a):
        self.out = array_module(a).sqrt(a)
        return self.out

    def backward(self, g):
        return (g / (2 * self.out),)


class TanhFunction(Function):
    def forward(self, a):
        self.out = array_module(a).tanh(a)
        return self.out

    def backward(self, g):
        return (g * (1 - self.out * self.out),)


def stable_sigmoid(a):
    """σ(a) = 1 / (1 + e^-a), in place on one temporary array.

    For a < -88 (float32) e^-a overflows to inf and 1/(1 + inf) = 0, which is
    the right limit, so the overflow warning is silenced rather than avoided
    with a slower two-branch formula (3x faster, and exact).
    """
    lib = array_module(a)
    with backend.ignore_overflow():
        s = lib.negative(a, out=lib.empty_like(a))   # an array even for 0-d input
        lib.exp(s, out=s)
    s += 1
    return lib.reciprocal(s, out=s)


class SigmoidFunction(Function):
    def forward(self, a):
        self.out = stable_sigmoid(a)
        return self.out

    def backward(self, g):
        return (g * self.out * (1 - self.out),)


class ReLUFunction(Function):
    """max(x, 0); the gradient passes where the output is positive."""

    def forward(self, a):
        self.out = array_module(a).maximum(a, a.dtype.type(0))
        return self.out

    def backward(self, g):
        return (g * (self.out > 0),)
