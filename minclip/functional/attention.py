"""Attention: ``scaled_dot_product_attention`` and the head split around it.

    attention(q, k, v) = softmax(q kᵀ / √d + mask) v

Every attention of the package (the Transformer's ``MultiheadAttention`` and
the ResNet's ``AttentionPool2d``) runs through the two functions below, so
there is one implementation to read, test and speed up.
"""
import math

from minclip.functional.softmax import softmax


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
    return attention_weights(q, k, mask) @ v                                  # (..., Tq, dv)
