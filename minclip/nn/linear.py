"""``Linear`` (y = x Wᵀ + b) and ``Embedding`` (a lookup table)."""
import math

from minclip import functional as F
from minclip.backend import value_range, xp
from minclip.nn import init
from minclip.nn.module import Module, Parameter
from minclip.tensor import Function, Tensor


class LinearFunction(Function):
    """y = x Wᵀ + b for x of shape (..., in) and W of shape (out, in).

    One fused node instead of transpose + matmul + add. Forward and
    backward fold the leading axes into one, so each product is a single 2-D
    matrix product: NumPy multiplies a 3-D array by a transposed 2-D one
    batch by batch, about 10x slower than one (N·T, in) x (in, out) product.
        dx = g W,   dW = gᵀ x,   db = Σ g.
    """

    def forward(self, x, weight, bias=None):
        self.x, self.weight = x, weight
        out = x.reshape(-1, x.shape[-1]) @ weight.T                  # (N, out), N = all leading axes
        if bias is not None:
            out += bias
        return out.reshape(*x.shape[:-1], weight.shape[0])           # (..., out)

    def backward(self, g):
        """(dx, dW, db) from g = dL/dy; None for an input that needs no gradient (and no bias)."""
        # BEGIN EXERCISE 3.5: Linear's fused backward
        x, w = self.x, self.weight
        g2 = g.reshape(-1, g.shape[-1])                              # (N, out)
        gx = (g2 @ w).reshape(x.shape) if self.needs_grad[0] else None  # (..., in)
        gw = g2.T @ x.reshape(-1, x.shape[-1]) if self.needs_grad[1] else None  # (out, in)
        gb = g2.sum(axis=0) if len(self.needs_grad) > 2 and self.needs_grad[2] else None
        return gx, gw, gb
        # END EXERCISE


def linear(x, weight, bias=None):
    """y = x Wᵀ + b (PyTorch's ``F.linear``)."""
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input {x.shape} does not end in weight's in_features "
                         f"{weight.shape[1]} (weight {weight.shape})")
    if bias is None:
        return LinearFunction.apply(x, weight)
    return LinearFunction.apply(x, weight, bias)


class Linear(Module):
    """A fully connected layer: weight (out_features, in_features), optional bias."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = init.kaiming_uniform_default_(Parameter(xp.empty((out_features, in_features), dtype="float32")))
        bound = 1.0 / math.sqrt(in_features)
        self.bias = init.uniform_(Parameter(xp.empty(out_features, dtype="float32")), -bound, bound) if bias else None

    def forward(self, x):
        self.check_input(x, None, (self.in_features,), f"(..., {self.in_features})")
        return linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_features}→{self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A table of ``num_embeddings`` vectors of size ``embedding_dim``, indexed by integer ids."""

    def __init__(self, num_embeddings, embedding_dim):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = init.normal_(Parameter(xp.empty((num_embeddings, embedding_dim), dtype="float32")))

    def forward(self, ids):
        # NumPy reads id -1 as the last row and CuPy wraps ids past the end: both silently
        # wrong, so check the range (free for host ids; one device-to-host copy on a GPU).
        ids = ids.data if isinstance(ids, Tensor) else ids
        if not hasattr(ids, "dtype"):                                 # a list
            ids = self.weight.xp.asarray(ids)
        low, high = value_range(ids)
        if low < 0 or high >= self.num_embeddings:
            raise IndexError(f"Embedding({self.extra_repr()}): ids must be in [0, {self.num_embeddings}), "
                             f"got ids from {low} to {high}")
        return F.embedding(self.weight, ids)                          # (*ids.shape, D)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"
