"""Affine maps and lookups: ``linear`` (y = x Wᵀ + b) and ``embedding`` (rows of a table)."""
from minclip import backend
from minclip.backend import array_module
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

class EmbeddingFunction(Function):
    """out = weight[ids]: a table lookup. Backward adds each row of g into
    the row of the table it came from (scatter-add: an id may repeat)."""

    def forward(self, weight, ids):
        self.ids, self.shape = ids, weight.shape
        return weight[ids]                                           # (*ids.shape, D)

    def backward(self, g):
        lib = array_module(g)
        grad = lib.zeros(self.shape, dtype=g.dtype)
        backend.scatter_add(grad, self.ids.reshape(-1), g.reshape(-1, self.shape[1]))
        return (grad,)


def embedding(weight, ids):
    """Rows of ``weight`` (V, D) for integer ``ids`` of any shape -> (*ids.shape, D)."""
    ids = ids.data if isinstance(ids, Tensor) else ids
    ids = array_module(weight.data).asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"embedding: ids must be integers, got {ids.dtype}")
    return EmbeddingFunction.apply(weight, ids=ids)
