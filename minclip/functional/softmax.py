"""Softmax and its family, fused: ``softmax``, ``log_softmax``, ``logsumexp``, ``cross_entropy``.

Built from primitives, each would record several nodes, keep every
intermediate array alive until backward, and (the naive
``exp(x) / exp(x).sum()``) overflow for large x. One node with a closed-form
backward is faster, lighter and numerically stable.
"""
from minclip.backend import array_module
from minclip.tensor import Function, Tensor


class SoftmaxFunction(Function):
    """y = exp(x - max x) / Σ exp(x - max x), along ``axis``.

    Subtracting the max changes nothing mathematically but keeps exp from
    overflowing. Backward, with s = Σ_j g_j y_j:  dL/dx_i = y_i (g_i - s).
    """

    def forward(self, x, axis):
        lib = array_module(x)
        self.axis = axis
        e = x - x.max(axis=axis, keepdims=True)
        lib.exp(e, out=e)                                              # in place: one array, not two
        e /= e.sum(axis=axis, keepdims=True)
        self.y = e
        return e

    def backward(self, g):
        """dL/dx = y · (g - Σ g·y) along ``self.axis``, from the saved output ``self.y``."""
        # BEGIN EXERCISE 2.6: Softmax backward
        y = self.y
        return (y * (g - (g * y).sum(axis=self.axis, keepdims=True)),)
        # END EXERCISE


def softmax(x, axis=-1):
    return SoftmaxFunction.apply(x, axis=axis)


def _logsumexp(x, axis):
    """log Σ exp(x) along axis (kept), computed stably."""
    lib = array_module(x)
    m = x.max(axis=axis, keepdims=True)
    m = lib.where(lib.isfinite(m), m, 0)     # an all -inf row gives -inf, not -inf - -inf = nan
    return m + lib.log(lib.exp(x - m).sum(axis=axis, keepdims=True))


def _log_softmax(x, axis):
    """x - logsumexp(x) along axis, computed as (x - max) - log Σ exp(x - max).

    The same value as ``x - _logsumexp(x)``, but the log-probabilities near 0
    stay exact for huge x: in float32, 1e4 - (1e4 + log 2) loses the last
    digits of log 2, while (1e4 - 1e4) - log 2 does not.
    """
    lib = array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - lib.log(lib.exp(shifted).sum(axis=axis, keepdims=True))


class LogSoftmaxFunction(Function):
    """y = x - logsumexp(x). Backward: dL/dx = g - softmax(x) · Σ g."""

    def forward(self, x, axis):
        self.axis = axis
        self.y = _log_softmax(x, axis)
        return self.y

    def backward(self, g):
        lib = array_module(g)
        return (g - lib.exp(self.y) * g.sum(axis=self.axis, keepdims=True),)


def log_softmax(x, axis=-1):
    return LogSoftmaxFunction.apply(x, axis=axis)


class LogSumExpFunction(Function):
    """log Σ exp(x); its gradient is softmax(x)."""

    def forward(self, x, axis, keepdims):
        lib = array_module(x)
        self.x, self.axis = x, axis
        self.out = _logsumexp(x, axis)
        return self.out if keepdims else lib.squeeze(self.out, axis=axis)

    def backward(self, g):
        lib = array_module(g)
        g = g.reshape(self.out.shape)
        return (g * lib.exp(self.x - self.out),)


def logsumexp(x, axis=-1, keepdims=False):
    return LogSumExpFunction.apply(x, axis=axis, keepdims=keepdims)


class CrossEntropyFunction(Function):
    """Mean over N of -log softmax(logits)[target], for logits (N, C).

    Fused with the softmax: the gradient is simply (softmax - onehot) / N.
    """

    def forward(self, logits, targets):
        lib = array_module(logits)
        n = logits.shape[0]
        log_probs = _log_softmax(logits, axis=1)                     # (N, C)
        self.log_probs, self.targets = log_probs, targets
        return -log_probs[lib.arange(n), targets].mean()

    def backward(self, g):
        """dL/dlogits = g · (softmax(logits) - onehot(targets)) / N."""
        # BEGIN EXERCISE 2.8: Cross-entropy backward
        lib = array_module(g)
        n = self.log_probs.shape[0]
        grad = lib.exp(self.log_probs)                                # softmax (N, C)
        grad[lib.arange(n), self.targets] -= 1
        grad *= g / n
        return (grad,)
        # END EXERCISE


def cross_entropy(logits, targets):
    """Mean cross-entropy of ``logits`` (N, C) against integer ``targets`` (N,)."""
    targets = targets.data if isinstance(targets, Tensor) else targets
    targets = array_module(logits.data).asarray(targets)
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy: expected logits (N, C) and targets (N,), "
                         f"got {logits.shape} and {targets.shape}")
    return CrossEntropyFunction.apply(logits, targets=targets.astype("int64"))
