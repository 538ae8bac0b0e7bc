"""Attention: ``scaled_dot_product_attention`` and the head split around it.

    attention(q, k, v) = softmax(q kᵀ / √d + mask) v

Every attention of the package (the Transformer's ``MultiheadAttention`` and
the ResNet's ``AttentionPool2d``) runs through the two functions below, so
there is one implementation to read, test and speed up.

On NumPy, large inputs take a fast path beside that composition,
``AttentionFunction``: the same formula as one node, computed over blocks of
the batch spread over threads (``minclip.blocked``).
"""
import math

from minclip import blocked
from minclip.backend import array_module
from minclip.functional.softmax import SoftmaxFunction, softmax, softmax_in_place
from minclip.tensor import Function, Tensor


def split_heads(x, num_heads):
    """(B, T, D) -> (B, H, T, d), d = D / H: head h gets features h·d to (h+1)·d - 1 of every token."""
    # BEGIN EXERCISE 3.6: multi-head split
    B, T, D = x.shape
    return x.reshape(B, T, num_heads, D // num_heads).transpose(0, 2, 1, 3)   # (B, H, T, d)
    # END EXERCISE


def merge_heads(x):
    """(B, H, T, d) -> (B, T, H·d): the inverse of ``split_heads``."""
    B, H, T, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * d)                      # (B, T, D)


def attention_weights(q, k, mask=None):
    """softmax(q kᵀ / √d + mask) along the keys: (..., Tq, d), (..., Tk, d) -> (..., Tq, Tk).

    ``mask`` is additive (0 where attention is allowed, -inf where it is not)
    and broadcasts to (..., Tq, Tk). The softmax is the fused one, so the
    backward of the weights is one cheap formula.
    """
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"attention: q {q.shape} and k {k.shape} do not fit (..., Tq, d), (..., Tk, d)")
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.swapaxes(-1, -2)        # (..., Tq, Tk)
    if mask is not None:
        scores = scores + mask
    return softmax(scores, axis=-1)


def scaled_dot_product_attention(q, k, v, mask=None):
    """softmax(q kᵀ / √d + mask) v, batched over every leading axis.

    q: (..., Tq, d), k: (..., Tk, d), v: (..., Tk, dv) -> (..., Tq, dv); ``mask``
    as in ``attention_weights``.
    """
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"scaled_dot_product_attention: q {q.shape}, k {k.shape} and "
                         f"v {v.shape} do not fit (..., Tq, d), (..., Tk, d), (..., Tk, dv)")
    if q.ndim >= 3 and q.shape[:-2] == k.shape[:-2] == v.shape[:-2] and blocked.worth_it(q.data):
        return AttentionFunction.apply(q, k, v, mask=mask.data if isinstance(mask, Tensor) else mask)
    return attention_weights(q, k, mask) @ v                                  # (..., Tq, dv)


class AttentionFunction(Function):
    """softmax(q kᵀ / √d + mask) v as one node: the NumPy fast path of ``scaled_dot_product_attention``.

    The composition records five nodes (scale, scores, mask, softmax,
    weighted sum) and runs each batched product on one core: OpenBLAS gives
    a 65×64 matrix product one thread. Here each block of the leading (batch)
    axis goes through the whole formula in one thread, in cache, the blocks
    spread over threads. It keeps q, k, v and the weights P for the backward:

        dV = Pᵀ g,   dP = g Vᵀ,   dS = softmax's backward of dP,   dQ = dS K / √d,   dK = dSᵀ Q / √d

    (dS from ``SoftmaxFunction.backward``, the course's formula). Measured
    with benchmarks/bench_fast_paths.py on 2 cores for a 256-wide ViT layer at
    batch 128 (q, k, v (128, 4, 65, 64)), forward + backward: 41.3 -> 29.5 ms
    (PyTorch's fused ``scaled_dot_product_attention``: 29.6 ms).
    """

    def forward(self, q, k, v, mask):
        lib = array_module(q)
        self.q, self.k, self.v, self.scale = q, k, v, q.dtype.type(1 / math.sqrt(q.shape[-1]))
        self.p = lib.empty(q.shape[:-1] + k.shape[-2:-1], dtype=q.dtype)     # (..., Tq, Tk)
        out = lib.empty(q.shape[:-1] + v.shape[-1:], dtype=q.dtype)          # (..., Tq, dv)

        def kernel(qb, kb, vb, pb, ob):
            lib.matmul(qb, kb.swapaxes(-1, -2), out=pb)                     # scores
            pb *= self.scale
            if mask is not None:
                pb += mask
            softmax_in_place(pb)
            lib.matmul(pb, vb, out=ob)
        blocked.over_rows(kernel, q, k, v, self.p, out, threaded=self.threaded())
        return out

    def backward(self, g):
        lib = array_module(g)
        grads = [lib.empty_like(a) if needed else None for a, needed in zip((self.q, self.k, self.v), self.needs_grad)]

        def kernel(gb, qb, kb, vb, pb, *outs):
            gq, gk, gv = outs
            if gv is not None:
                lib.matmul(pb.swapaxes(-1, -2), gb, out=gv)
            d_scores = softmax_backward(pb, lib.matmul(gb, vb.swapaxes(-1, -2)))  # dS from dP
            d_scores *= self.scale
            if gq is not None:
                lib.matmul(d_scores, kb, out=gq)
            if gk is not None:
                lib.matmul(d_scores.swapaxes(-1, -2), qb, out=gk)
        blocked.over_rows(kernel, g, self.q, self.k, self.v, self.p, *grads, threaded=self.threaded())
        return tuple(grads)

    def threaded(self):
        """Whether the blocks may go to threads: only while each head's products stay on one BLAS thread."""
        (Tq, d), (Tk, dv) = self.q.shape[-2:], self.v.shape[-2:]
        return blocked.one_thread_product(Tq, Tk, max(d, dv))


def softmax_backward(y, g):
    """dL/dx of a softmax along the last axis with output ``y``, from dL/dy = ``g``: the
    backward of ``SoftmaxFunction`` itself, so the fast path runs the course's formula."""
    fn = SoftmaxFunction()
    fn.y, fn.axis, fn.needs_grad = y, -1, (True,)
    return fn.backward(g)[0]
