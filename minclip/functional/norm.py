"""Normalizations over the feature axis, fused: ``layer_norm`` and ``normalize`` (L2)."""
from minclip.backend import array_module
from minclip.tensor import Function


class LayerNormFunction(Function):
    """y = (x - μ) / √(σ² + eps) · w + b over the last axis.

    With x̂ the normalized input and ĝ = g · w, the input gradient is
        dx = (ĝ - mean(ĝ) - x̂ · mean(ĝ · x̂)) / √(σ² + eps)
    (the two means come from μ and σ depending on every x_i).
    """

    def forward(self, x, weight, bias, eps):
        lib = array_module(x)
        xhat = x - x.mean(axis=-1, keepdims=True)                    # (..., D), centred
        var = lib.einsum("...d,...d->...", xhat, xhat)[..., None] / x.shape[-1]   # no (..., D) temporary
        self.rstd = 1.0 / lib.sqrt(var + x.dtype.type(eps))            # (..., 1)
        xhat *= self.rstd                                             # normalized, in place
        self.xhat, self.weight = xhat, weight
        out = xhat * weight
        out += bias
        return out

    def backward(self, g):
        """Gradients (dx, dweight, dbias), None for an input that needs none."""
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
    return LayerNormFunction.apply(x, weight, bias, eps=eps)


class NormalizeFunction(Function):
    """y = x / max(‖x‖, eps) along ``axis`` (L2).

    Backward: dx = (g - y · Σ g·y) / ‖x‖ (the component along y is removed,
    since scaling x does not change y).
    """

    def forward(self, x, axis, eps):
        lib = array_module(x)
        self.axis = axis
        self.norm = lib.maximum(lib.sqrt((x * x).sum(axis=axis, keepdims=True)), x.dtype.type(eps))
        self.y = x / self.norm
        return self.y

    def backward(self, g):
        y = self.y
        return ((g - y * (g * y).sum(axis=self.axis, keepdims=True)) / self.norm,)


def normalize(x, axis=-1, eps=1e-12):
    """Scale ``x`` to unit L2 norm along ``axis`` (CLIP's feature normalization)."""
    return NormalizeFunction.apply(x, axis=axis, eps=eps)
