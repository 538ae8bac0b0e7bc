"""``Linear`` (y = x Wᵀ + b) and ``Embedding`` (a lookup table), the layers of ``F.linear`` and ``F.embedding``."""
import math

from minclip import functional as F
from minclip.backend import value_range, xp
from minclip.nn import init
from minclip.nn.module import Module, Parameter
from minclip.tensor import Tensor


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
        return F.linear(x, self.weight, self.bias)

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
