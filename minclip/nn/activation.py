"""Activation layers, plus ``Identity`` and ``Dropout``: thin Module wrappers of ``F``."""
from minclip import functional as F
from minclip.nn.module import Module


class GELU(Module):
    """x·Φ(x), the exact (erf) form."""

    def forward(self, x):
        return F.gelu(x)


class QuickGELU(Module):
    """x·σ(1.702x): the activation OpenAI's CLIP weights were trained with."""

    def forward(self, x):
        return F.quick_gelu(x)


class ReLU(Module):
    def forward(self, x):
        return x.relu()


class Identity(Module):
    def forward(self, x):
        return x


class Dropout(Module):
    """Zeroes elements with probability p while training; the identity in eval mode."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"
