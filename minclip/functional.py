"""Differentiable functions beyond the Tensor methods: ``import minclip.functional as F``.

Two kinds live here:

* composites, built from Tensor ops, whose gradient autodiff derives for free
  (``gelu``, ``quick_gelu``, ``masked_fill``, ``scaled_dot_product_attention``);
* fused ops with a hand-derived backward (``softmax``, ``log_softmax``,
  ``logsumexp``, ``cross_entropy``, ``layer_norm``, ``normalize``,
  ``embedding``). Built from primitives, each would record 5-10 nodes and keep
  every intermediate array alive until backward; worse, the naive
  ``exp(x) / exp(x).sum()`` overflows for large x. One node with a closed-form
  backward is faster, lighter and numerically stable.
"""
import itertools
import math

from minclip import backend
from minclip.backend import array_module, backend_name, elementwise
from minclip.tensor import Function, Tensor, stable_sigmoid, unbroadcast


def _tensor(x):
    return x if isinstance(x, Tensor) else Tensor(x)


# ------------------------------------------------------------- joining

class Concatenate(Function):
    def forward(self, *arrays, axis):
        self.axis = axis
        self.splits = [a.shape[axis] for a in arrays]
        return array_module(arrays[0]).concatenate(arrays, axis=axis)

    def backward(self, g):
        edges = list(itertools.accumulate(self.splits[:-1]))       # where each input ends
        return tuple(array_module(g).split(g, edges, axis=self.axis))


def concatenate(tensors, axis=0):
    """Join tensors along an existing axis; the gradient is split back."""
    return Concatenate.apply(*[_tensor(t) for t in tensors], axis=axis)


def stack(tensors, axis=0):
    """Join tensors along a new axis."""
    tensors = [_tensor(t) for t in tensors]
    shape = tensors[0].shape
    axis = axis % (len(shape) + 1)
    expanded = [t.reshape(shape[:axis] + (1,) + shape[axis:]) for t in tensors]
    return concatenate(expanded, axis=axis)


class Where(Function):
    def forward(self, a, b, condition):
        self.condition, self.shapes = condition, (a.shape, b.shape)
        return array_module(a).where(condition, a, b)

    def backward(self, g):
        zero = g.dtype.type(0)
        xp = array_module(g)
        return (unbroadcast(xp.where(self.condition, g, zero), self.shapes[0]),
                unbroadcast(xp.where(self.condition, zero, g), self.shapes[1]))


def where(condition, a, b):
    """``a`` where ``condition`` is true, else ``b`` (condition is not differentiated).

    A scalar ``a`` or ``b`` takes the dtype of the other (no upcast).
    """
    condition = condition.data if isinstance(condition, Tensor) else condition
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        a = Tensor(a)
    a = a if isinstance(a, Tensor) else b._wrap(a)
    b = b if isinstance(b, Tensor) else a._wrap(b)
    return Where.apply(a, b, condition=a.xp.asarray(condition))  # a host mask goes to the device


def masked_fill(x, mask, value):
    """``x`` with ``value`` wherever ``mask`` is true (e.g. -inf above a causal diagonal)."""
    return where(mask, x._wrap(value), x)


# ---------------------------------------------------------- activations

class GELU(Function):
    """GELU(x) = x · Φ(x) = x · ½(1 + erf(x/√2)), the exact form.

    d/dx = Φ(x) + x · φ(x), with φ the standard normal density.
    """

    def forward(self, x):
        self.x = x
        self.cdf = 0.5 * (1.0 + backend.erf(x * x.dtype.type(1 / math.sqrt(2))))
        return x * self.cdf

    def backward(self, g):
        xp = array_module(g)
        x = self.x
        pdf = xp.exp(-0.5 * x * x) * x.dtype.type(1 / math.sqrt(2 * math.pi))
        return (g * (self.cdf + x * pdf),)


def gelu(x):
    """The exact (erf) GELU, PyTorch's default ``nn.GELU()``."""
    return GELU.apply(x)


@elementwise
def quick_gelu_kernel(x, k):
    """x · σ(k·x), with σ(z) = 1 / (1 + e^(-z)): e^(-z) = inf for very negative z gives exactly 0."""
    return x / (1 + array_module(x).exp(-k * x))


@elementwise
def quick_gelu_grad_kernel(g, x, k):
    """g · (σ + k·x·σ(1 - σ)), σ = σ(k·x) recomputed (cheaper on a GPU than keeping it)."""
    s = 1 / (1 + array_module(x).exp(-k * x))
    return g * (s + k * x * s * (1 - s))


class QuickGELU(Function):
    """x · σ(1.702 x), OpenAI's fast approximation of GELU (their weights need it).

    d/dx = σ(1.702x) + 1.702 · x · σ(1.702x)(1 - σ(1.702x)).
    On CuPy forward and backward are one fused kernel each; NumPy keeps σ.
    """

    def forward(self, x):
        self.x, k = x, x.dtype.type(1.702)
        if backend_name(x) == "cupy":
            return quick_gelu_kernel(x, k)
        self.s = stable_sigmoid(x * k)
        return x * self.s

    def backward(self, g):
        k = self.x.dtype.type(1.702)
        if backend_name(g) == "cupy":
            return (quick_gelu_grad_kernel(g, self.x, k),)
        s = self.s
        return (g * (s + k * self.x * s * (1 - s)),)


def quick_gelu(x):
    return QuickGELU.apply(x)


def relu(x):
    return x.relu()


def sigmoid(x):
    return x.sigmoid()


def tanh(x):
    return x.tanh()


# ------------------------------------------------- softmax and its family

class Softmax(Function):
    """y = exp(x - max x) / Σ exp(x - max x), along ``axis``.

    Subtracting the max changes nothing mathematically but keeps exp from
    overflowing. Backward, with s = Σ_j g_j y_j:  dL/dx_i = y_i (g_i - s).
    """

    def forward(self, x, axis):
        xp = array_module(x)
        self.axis = axis
        e = x - x.max(axis=axis, keepdims=True)
        xp.exp(e, out=e)                                              # in place: one array, not two
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
    return Softmax.apply(x, axis=axis)


def _logsumexp(x, axis):
    """log Σ exp(x) along axis (kept), computed stably."""
    xp = array_module(x)
    m = x.max(axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)     # an all -inf row gives -inf, not -inf - -inf = nan
    return m + xp.log(xp.exp(x - m).sum(axis=axis, keepdims=True))


def _log_softmax(x, axis):
    """x - logsumexp(x) along axis, computed as (x - max) - log Σ exp(x - max).

    The same value as ``x - _logsumexp(x)``, but the log-probabilities near 0
    stay exact for huge x: in float32, 1e4 - (1e4 + log 2) loses the last
    digits of log 2, while (1e4 - 1e4) - log 2 does not.
    """
    xp = array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


class LogSoftmax(Function):
    """y = x - logsumexp(x). Backward: dL/dx = g - softmax(x) · Σ g."""

    def forward(self, x, axis):
        self.axis = axis
        self.y = _log_softmax(x, axis)
        return self.y

    def backward(self, g):
        xp = array_module(g)
        return (g - xp.exp(self.y) * g.sum(axis=self.axis, keepdims=True),)


def log_softmax(x, axis=-1):
    return LogSoftmax.apply(x, axis=axis)


class LogSumExp(Function):
    """log Σ exp(x); its gradient is softmax(x)."""

    def forward(self, x, axis, keepdims):
        xp = array_module(x)
        self.x, self.axis = x, axis
        self.out = _logsumexp(x, axis)
        return self.out if keepdims else xp.squeeze(self.out, axis=axis)

    def backward(self, g):
        xp = array_module(g)
        g = g.reshape(self.out.shape)
        return (g * xp.exp(self.x - self.out),)


def logsumexp(x, axis=-1, keepdims=False):
    return LogSumExp.apply(x, axis=axis, keepdims=keepdims)


class CrossEntropy(Function):
    """Mean over N of -log softmax(logits)[target], for logits (N, C).

    Fused with the softmax: the gradient is simply (softmax - onehot) / N.
    """

    def forward(self, logits, targets):
        xp = array_module(logits)
        n = logits.shape[0]
        log_probs = _log_softmax(logits, axis=1)                     # (N, C)
        self.log_probs, self.targets = log_probs, targets
        return -log_probs[xp.arange(n), targets].mean()

    def backward(self, g):
        """dL/dlogits = g · (softmax(logits) - onehot(targets)) / N.

        Hint: softmax is ``exp(self.log_probs)``; subtract 1 at
        [row i, column targets[i]] for every i, then scale.
        """
        # BEGIN EXERCISE 2.8: Cross-entropy backward
        xp = array_module(g)
        n = self.log_probs.shape[0]
        grad = xp.exp(self.log_probs)                                # softmax (N, C)
        grad[xp.arange(n), self.targets] -= 1
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
    return CrossEntropy.apply(logits, targets=targets.astype("int64"))


# ------------------------------------------------------------ normalization

class LayerNorm(Function):
    """y = (x - μ) / √(σ² + eps) · w + b over the last axis.

    With x̂ the normalized input and ĝ = g · w, the input gradient is
        dx = (ĝ - mean(ĝ) - x̂ · mean(ĝ · x̂)) / √(σ² + eps)
    (the two means come from μ and σ depending on every x_i).
    """

    def forward(self, x, weight, bias, eps):
        xp = array_module(x)
        xhat = x - x.mean(axis=-1, keepdims=True)                    # (..., D), centred
        var = xp.einsum("...d,...d->...", xhat, xhat)[..., None] / x.shape[-1]   # no (..., D) temporary
        self.rstd = 1.0 / xp.sqrt(var + x.dtype.type(eps))            # (..., 1)
        xhat *= self.rstd                                             # normalized, in place
        self.xhat, self.weight = xhat, weight
        out = xhat * weight
        out += bias
        return out

    def backward(self, g):
        """Gradients (dx, dweight, dbias), None for an input that needs none.

        Hint: dweight = Σ g·x̂ and dbias = Σ g over every axis but the last;
        dx is the class docstring's formula, from the saved ``self.xhat``,
        ``self.rstd`` = 1/√(σ² + eps) and ``self.weight``.
        """
        # BEGIN EXERCISE 2.7: Layer normalization backward
        xhat, rstd = self.xhat, self.rstd
        leading = tuple(range(g.ndim - 1))
        gw = (g * xhat).sum(axis=leading) if self.needs_grad[1] else None
        gb = g.sum(axis=leading) if self.needs_grad[2] else None
        gx = None
        if self.needs_grad[0]:
            gx = g * self.weight                                      # ĝ, then dx in place
            ghat_xhat = (gx * xhat).mean(axis=-1, keepdims=True)
            gx -= gx.mean(axis=-1, keepdims=True)
            gx -= xhat * ghat_xhat
            gx *= rstd
        return gx, gw, gb
        # END EXERCISE


def layer_norm(x, weight, bias, eps=1e-5):
    """Layer normalization over the last axis, with gain ``weight`` and ``bias`` (D,)."""
    if weight.shape != x.shape[-1:] or bias.shape != x.shape[-1:]:
        raise ValueError(f"layer_norm: weight/bias of shape {weight.shape}/{bias.shape} "
                         f"do not match the last axis of input {x.shape}")
    return LayerNorm.apply(x, weight, bias, eps=eps)


class Normalize(Function):
    """y = x / max(‖x‖, eps) along ``axis`` (L2).

    Backward: dx = (g - y · Σ g·y) / ‖x‖ (the component along y is removed,
    since scaling x does not change y).
    """

    def forward(self, x, axis, eps):
        xp = array_module(x)
        self.axis = axis
        self.norm = xp.maximum(xp.sqrt((x * x).sum(axis=axis, keepdims=True)), x.dtype.type(eps))
        self.y = x / self.norm
        return self.y

    def backward(self, g):
        y = self.y
        return ((g - y * (g * y).sum(axis=self.axis, keepdims=True)) / self.norm,)


def normalize(x, axis=-1, eps=1e-12):
    """Scale ``x`` to unit L2 norm along ``axis`` (CLIP's feature normalization)."""
    return Normalize.apply(x, axis=axis, eps=eps)


# -------------------------------------------------------------- embedding

class Embedding(Function):
    """out = weight[ids]: a table lookup. Backward adds each row of g into
    the row of the table it came from (scatter-add: an id may repeat)."""

    def forward(self, weight, ids):
        self.ids, self.shape = ids, weight.shape
        return weight[ids]                                           # (*ids.shape, D)

    def backward(self, g):
        xp = array_module(g)
        grad = xp.zeros(self.shape, dtype=g.dtype)
        backend.scatter_add(grad, self.ids.reshape(-1), g.reshape(-1, self.shape[1]))
        return (grad,)


def embedding(weight, ids):
    """Rows of ``weight`` (V, D) for integer ``ids`` of any shape -> (*ids.shape, D)."""
    ids = ids.data if isinstance(ids, Tensor) else ids
    ids = array_module(weight.data).asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"embedding: ids must be integers, got {ids.dtype}")
    return Embedding.apply(weight, ids=ids)


# ----------------------------------------------------------------- dropout

def dropout(x, p=0.5, training=True):
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p)."""
    if not training or p == 0:
        return x
    if not 0 <= p < 1:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    keep = backend.rng().random(x.shape) >= p
    return x * (keep.astype(x.dtype) * x.dtype.type(1 / (1 - p)))


# --------------------------------------------------------------- attention

def scaled_dot_product_attention(q, k, v, mask=None):
    """softmax(q kᵀ / √d + mask) v, batched over every leading axis.

    q: (..., Tq, d), k: (..., Tk, d), v: (..., Tk, dv); ``mask`` is additive
    (0 where attention is allowed, -inf where it is not) and broadcasts to
    (..., Tq, Tk). The softmax is the fused one above, so the backward of
    the attention weights is one cheap formula.
    """
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"scaled_dot_product_attention: q {q.shape}, k {k.shape} and "
                         f"v {v.shape} do not fit (..., Tq, d), (..., Tk, d), (..., Tk, dv)")
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q * scale) @ k.swapaxes(-1, -2)                        # (..., Tq, Tk)
    if mask is not None:
        scores = scores + mask
    return softmax(scores, axis=-1) @ v                              # (..., Tq, dv)
