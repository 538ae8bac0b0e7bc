"""Weight initializers, in place, drawn from minclip's seeded generator.

Each fills ``tensor.data`` and keeps its dtype (float32 stays float32), so
``backend.seed(0)`` followed by building a model gives the same weights on
every NumPy run.
"""
import math

from minclip import backend


def _fill(tensor, values):
    tensor.data = values.astype(tensor.dtype, copy=False)
    return tensor


def normal_(tensor, mean=0.0, std=1.0):
    """Fill with N(mean, std²)."""
    return _fill(tensor, backend.rng().standard_normal(tensor.shape, dtype="float32") * std + mean)


def uniform_(tensor, a=0.0, b=1.0):
    """Fill with U(a, b)."""
    return _fill(tensor, backend.rng().random(tensor.shape, dtype="float32") * (b - a) + a)


def zeros_(tensor):
    return _fill(tensor, backend.xp.zeros(tensor.shape, dtype=tensor.dtype))


def ones_(tensor):
    return _fill(tensor, backend.xp.ones(tensor.shape, dtype=tensor.dtype))


def fan_in_and_out(shape):
    """(fan_in, fan_out) of a weight: (out, in) for Linear, (out, in, kh, kw) for Conv2d."""
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def xavier_uniform_(tensor, gain=1.0):
    """U(-a, a) with a = gain·√(6 / (fan_in + fan_out)) (Glorot & Bengio, 2010)."""
    fan_in, fan_out = fan_in_and_out(tensor.shape)
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -a, a)


def kaiming_uniform_default_(tensor):
    """PyTorch's default for Linear and Conv2d weights: U(-1/√fan_in, 1/√fan_in)."""
    bound = 1.0 / math.sqrt(fan_in_and_out(tensor.shape)[0])
    return uniform_(tensor, -bound, bound)
