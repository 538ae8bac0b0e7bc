"""Softmax and its family, fused: ``softmax``, ``log_softmax``, ``logsumexp``, ``cross_entropy``.

Built from primitives, each would record several nodes, keep every
intermediate array alive until backward, and (the naive
``exp(x) / exp(x).sum()``) overflow for large x. One node with a closed-form
backward is faster, lighter and numerically stable.

On CuPy the elementwise chains between the reductions are fused GPU kernels
(``backend.elementwise``); NumPy keeps its in-place code. cupy.fuse compiles
at most one reduction per kernel, and only at its end (a row's max or sum
cannot be broadcast back over the row in the same kernel), so the max and
the sums stay separate calls. What that saves per call, counted as
array-library calls (each a launch on a GPU): softmax forward 4 instead of
5, backward 3 instead of 4; log-softmax forward 4 instead of 6, backward 2
instead of 4. All but the softmax forward (in place already) also write one
or two (..., C) temporaries fewer.
"""
from minclip.backend import array_module, elementwise, fused
from minclip.tensor import Function, Tensor


@elementwise
def exp_shifted_kernel(x, m):
    """exp(x - max x): the shifted exponentials of softmax and log-softmax."""
    return array_module(x).exp(x - m)


@elementwise
def softmax_grad_kernel(y, g, gy):
    """y · (g - Σ g·y), with the sum ``gy`` computed outside."""
    return y * (g - gy)


@elementwise
def log_softmax_kernel(x, m, total):
    """(x - max x) - log Σ exp(x - max x), with the max and the sum computed outside."""
    return (x - m) - array_module(total).log(total)


@elementwise
def log_softmax_grad_kernel(g, y, g_total):
    """g - softmax(x) · Σ g, with softmax(x) = exp(y) recomputed from the saved output."""
    return g - array_module(y).exp(y) * g_total


class SoftmaxFunction(Function):
    """y = exp(x - max x) / Σ exp(x - max x), along ``axis``.

    Subtracting the max changes nothing mathematically but keeps exp from
    overflowing. Backward, with s = Σ_j g_j y_j:  dL/dx_i = y_i (g_i - s).
    """

    def forward(self, x, axis):
        if fused(x):
            return self.forward_fused(x, axis)
        lib = array_module(x)
        self.axis = axis
        e = x - x.max(axis=axis, keepdims=True)
        lib.exp(e, out=e)                                              # in place: one array, not two
        e /= e.sum(axis=axis, keepdims=True)
        self.y = e
        return e

    def backward(self, g):
        """dL/dx = y · (g - Σ g·y) along ``self.axis``, from the saved output ``self.y``."""
        if fused(g):
            return self.backward_fused(g)
        # BEGIN EXERCISE 2.6: Softmax backward
        y = self.y
        return (y * (g - (g * y).sum(axis=self.axis, keepdims=True)),)
        # END EXERCISE

    def forward_fused(self, x, axis):
        """``forward`` as max, one fused exp(x - max), sum, divide in place."""
        self.axis = axis
        e = exp_shifted_kernel(x, x.max(axis=axis, keepdims=True))
        e /= e.sum(axis=axis, keepdims=True)
        self.y = e
        return e

    def backward_fused(self, g):
        """``backward`` as the sum Σ g·y and one fused y · (g - Σ g·y)."""
        return (softmax_grad_kernel(self.y, g, (g * self.y).sum(axis=self.axis, keepdims=True)),)


def softmax_in_place(x):
    """x ← softmax(x) along the last axis, in place on a plain array (a step of the attention fast path)."""
    lib = array_module(x)
    x -= x.max(axis=-1, keepdims=True)
    lib.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


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
    if fused(x):
        return _log_softmax_fused(x, axis)
    lib = array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - lib.log(lib.exp(shifted).sum(axis=axis, keepdims=True))


def _log_softmax_fused(x, axis):
    """``_log_softmax`` as max, sum of one fused exp(x - max), one fused (x - max) - log Σ."""
    m = x.max(axis=axis, keepdims=True)
    return log_softmax_kernel(x, m, exp_shifted_kernel(x, m).sum(axis=axis, keepdims=True))


class LogSoftmaxFunction(Function):
    """y = x - logsumexp(x). Backward: dL/dx = g - softmax(x) · Σ g."""

    def forward(self, x, axis):
        self.axis = axis
        self.y = _log_softmax(x, axis)
        return self.y

    def backward(self, g):
        if fused(g):
            return self.backward_fused(g)
        lib = array_module(g)
        return (g - lib.exp(self.y) * g.sum(axis=self.axis, keepdims=True),)

    def backward_fused(self, g):
        """``backward`` as the sum Σ g and one fused g - exp(y) · Σ g."""
        return (log_softmax_grad_kernel(g, self.y, g.sum(axis=self.axis, keepdims=True)),)


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
