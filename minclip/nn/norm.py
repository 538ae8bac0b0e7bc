"""``LayerNorm``: normalize each token's features to zero mean and unit variance."""
from minclip import functional as F
from minclip.backend import xp
from minclip.nn.module import Module, Parameter


class LayerNorm(Module):
    """y = (x - mean) / √(var + eps) · weight + bias over the last axis (size ``normalized_shape``)."""

    def __init__(self, normalized_shape, eps=1e-5):
        super().__init__()
        self.normalized_shape, self.eps = normalized_shape, eps
        self.weight = Parameter(xp.ones(normalized_shape, dtype="float32"))
        self.bias = Parameter(xp.zeros(normalized_shape, dtype="float32"))

    def forward(self, x):
        self.check_input(x, None, (self.normalized_shape,), f"(..., {self.normalized_shape})")
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"
