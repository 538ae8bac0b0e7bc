"""``batch_norm``: normalize each channel with statistics of the batch.

For x (N, C, H, W), each channel c is normalized over all N·H·W of its values
and then scaled and shifted by learned per-channel ``weight`` and ``bias``:

    y = (x - mean_c) / √(var_c + eps) · weight_c + bias_c

* In training, mean_c and var_c are the batch's own (var divided by N·H·W),
  and running estimates of both are updated, PyTorch style:
  running ← (1 - momentum)·running + momentum·batch (with the unbiased
  variance, divided by N·H·W - 1).
* In evaluation, the running estimates are used, so a prediction does not
  depend on the other images in the batch.

Synchronised batch norm (data-parallel training, ``comm`` given): each
rank holds a slice of the batch, and the statistics must be those of the
whole global batch, or N ranks would not train the model one process would.
The per-channel sums are all-reduced over the ranks in forward (Σx, then
Σ(x - mean)²) and in backward (Σg·x̂ and Σg).
"""
from minclip import backend
from minclip.backend import array_module
from minclip.tensor import Function, Tensor


def batch_statistics(x, running_mean, running_var, momentum):
    """Each channel's mean and (biased) variance over N, H, W of x (N, C, H, W),
    and the update of the running estimates (in place, as PyTorch does):

        running_mean ← (1 - momentum) · running_mean + momentum · mean
        running_var  ← (1 - momentum) · running_var  + momentum · var · n / (n - 1)

    where n = N·H·W: normalization divides by n, the running variance is the
    unbiased estimate (divided by n - 1). Returns (mean, var), each (C,).
    """
    # BEGIN EXERCISE 3.4: batch statistics and running averages
    n = x.size // x.shape[1]
    mean = x.mean(axis=(0, 2, 3))                                          # (C,)
    var = x.var(axis=(0, 2, 3))                                            # (C,), divided by n
    running_mean *= 1 - momentum
    running_mean += momentum * mean
    running_var *= 1 - momentum
    running_var += (momentum * n / (n - 1)) * var
    return mean, var
    # END EXERCISE


def channel_sums(a):
    """Σ over N, H, W of a (N, C, H, W) -> (C,), in a's dtype: over each image's H·W first, then over N.

    The same sum as ``a.sum(axis=(0, 2, 3))``, faster on NumPy (measured in
    ``two_pass_statistics``): each row of H·W numbers is contiguous, and
    summing a contiguous row is NumPy's fastest reduction (pairwise, so
    float32 rounds little). The N
    partial sums per channel are added in float64, as PyTorch accumulates
    batch statistics on the CPU: N numbers added one after another in
    float32 would lose up to N roundings, and a channel whose mean is far
    larger than its spread passes that error on to every normalized value.
    """
    N, C = a.shape[:2]
    return a.reshape(N, C, -1).sum(axis=2).sum(axis=0, dtype="float64").astype(a.dtype)


def channel_dots(a, b):
    """Σ over N, H, W of a · b, for a and b (N, C, H, W) -> (C,), without an a · b array
    (one dot product per image and channel, then their sum over N as in ``channel_sums``)."""
    N, C = a.shape[:2]
    dots = array_module(a).einsum("nck,nck->nc", a.reshape(N, C, -1), b.reshape(N, C, -1))   # (N, C)
    return dots.sum(axis=0, dtype="float64").astype(a.dtype)


def two_pass_statistics(x, running_mean, running_var, momentum, comm=None):
    """``batch_statistics`` in two passes of per-channel sums, (Σx, count) and then Σ(x - mean)²;
    with ``comm``, over the global batch: the slices x (N_r, C, H, W) of every rank.

    Synchronised, each pass is one all-reduce: the two-pass variance is as
    accurate as one process's (the one-pass Σx² - n·mean² cancels badly in
    float32). The running estimates are updated as in ``batch_statistics``,
    with n the global count (travelling in x's dtype: exact up to 2²⁴ values
    per channel in float32, rounded by less than 1e-7 relative beyond).
    Without ``comm`` it is the fast path of ``batch_statistics``: the same
    numbers from ``channel_sums`` and ``channel_dots``, 0.5-0.7 of the time of
    NumPy's ``mean`` and ``var`` over (0, 2, 3) (measured on 2 cores: 3.8 -> 2.4 ms
    for x (64, 128, 16, 16), 15.2 -> 10.5 ms for (8, 256, 56, 56)): three passes
    over x, each reduction along contiguous rows.
    """
    lib, C = array_module(x), x.shape[1]
    sums, n = channel_sums(x), x.size // C                                   # (C,), this rank's count
    if comm is not None:                     # the global sums and count (one device->host copy: n)
        total = comm.allreduce(lib.concatenate([sums, lib.asarray([n], dtype=x.dtype)]))
        sums, n = total[:C], int(total[-1])
    mean = sums / n                                                          # (C,)
    centred = x - mean.reshape(1, -1, 1, 1)                                  # (N, C, H, W)
    squares = channel_dots(centred, centred)                                 # (C,)
    var = (squares if comm is None else comm.allreduce(squares)) / n         # (C,)
    running_mean *= 1 - momentum
    running_mean += momentum * mean
    running_var *= 1 - momentum
    running_var += (momentum * n / (n - 1)) * var
    return mean, var


class BatchNormFunction(Function):
    """y = x̂ · w + b with x̂ = (x - mean) / √(var + eps), per channel of x (N, C, H, W).

    With n = N·H·W and sums over N, H, W:
        dw = Σ g · x̂,   db = Σ g,
        dx = w / √(var + eps) · (g - db / n - x̂ · dw / n)   with batch statistics,
        dx = w / √(var + eps) · g                           with running statistics.
    The two extra terms in training come from mean and var depending on x
    (the same derivation as layer norm's, over N, H, W instead of features);
    they reuse the sums dw and db, so the whole backward is a few passes
    (with ``channel_sums`` and ``channel_dots``, and dx as g · scale plus one
    per-channel affine map of x - mean: 0.73 of the time of the same formula
    with NumPy's sums over (0, 2, 3), 15.7 -> 11.5 ms for x (64, 128, 16, 16)).

    Forward centres first, y = (x - mean) · (w / √(var + eps)) + b. (Folding
    it into one scale and shift, x · s + (b - mean · s), saves a pass but
    cancels in float32 when |mean| ≫ std: x · s and mean · s are then large and
    nearly equal. In the "rn tower step" benchmark that rounding flipped ReLUs
    after layer3's batch norms and put float32 gradients 5e-2 away from
    float64 ones.) It saves x (which is alive anyway) rather than x̂, and
    backward recomputes x̂: one activation-sized array less per layer.

    Synced (``comm`` given): n, Σ g·x̂ and Σ g in dx are sums over every
    rank's slice, one all-reduce; dw and db stay this rank's own (the
    gradient all-reduce of the training step adds them up).
    """

    def forward(self, x, weight, bias, *, mean, var, eps, batch_stats, comm=None):
        per_channel = (1, -1, 1, 1)
        rstd = (1 / array_module(x).sqrt(var + eps)).astype(x.dtype, copy=False)   # (C,)
        mean = mean.astype(x.dtype, copy=False)
        scale = weight * rstd                                              # (C,) w / √(var + eps)
        self.x, self.mean, self.rstd, self.scale = x, mean, rstd, scale.reshape(per_channel)
        self.batch_stats, self.comm = batch_stats, comm
        out = x - mean.reshape(per_channel)                                # (N, C, H, W)
        out *= self.scale
        out += bias.reshape(per_channel)
        return out

    def backward(self, g):
        per_channel = (1, -1, 1, 1)
        centred = self.x - self.mean.reshape(per_channel)                   # x - mean = x̂ / rstd
        gb = channel_sums(g)                                               # (C,) Σ g
        gw = channel_dots(g, centred) * self.rstd                          # (C,) Σ g · x̂
        gx = None
        if self.needs_grad[0] and self.batch_stats:
            n, sum_gw, sum_gb = g.size // g.shape[1], gw, gb
            if self.comm is not None:
                C, lib = gw.shape[0], array_module(g)
                total = self.comm.allreduce(lib.concatenate([gw, gb, lib.asarray([n], dtype=gw.dtype)]))
                sum_gw, sum_gb, n = total[:C], total[C:2 * C], int(total[-1])
            # dx = scale · (g - Σg / n - x̂ · Σgx̂ / n), with x̂ = centred · rstd, as
            # g · scale + (centred · k + c): two per-channel constants, no more full-size arrays
            scale = self.scale.reshape(-1)
            centred *= (-scale * self.rstd * sum_gw / n).reshape(per_channel)
            centred -= (scale * sum_gb / n).reshape(per_channel)
            gx = g * self.scale
            gx += centred
        elif self.needs_grad[0]:
            gx = g * self.scale
        return gx, gw, gb


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
               comm=None):
    """Batch normalization of x (N, C, H, W), as PyTorch's ``F.batch_norm``.

    ``training=True``: normalize with the batch's statistics and update
    ``running_mean`` and ``running_var`` (arrays of shape (C,)) in place.
    ``training=False``: normalize with the running statistics.
    ``weight`` and ``bias`` (C,) are optional (no scale and shift without them).
    ``comm`` (a ``minclip.distributed`` communicator): in training, the
    statistics of the global batch of all ranks (synchronised batch norm).
    """
    C = x.shape[1] if x.ndim == 4 else None
    if C is None or running_mean.shape != (C,) or running_var.shape != (C,):
        raise ValueError(f"batch_norm: expected input (N, C, H, W) and running statistics (C,), got input "
                         f"{x.shape}, running_mean {running_mean.shape}, running_var {running_var.shape}")
    if training and x.size // C < 2:
        raise ValueError(f"batch_norm: training needs more than one value per channel, got input {x.shape}")
    if training and (comm is not None or backend.fast_paths()):
        mean, var = two_pass_statistics(x.data, running_mean, running_var, momentum, comm)
    elif training:
        mean, var = batch_statistics(x.data, running_mean, running_var, momentum)
    else:
        mean, var = running_mean, running_var
    weight = Tensor(x.xp.ones(C, dtype=x.dtype)) if weight is None else weight
    bias = Tensor(x.xp.zeros(C, dtype=x.dtype)) if bias is None else bias
    return BatchNormFunction.apply(x, weight, bias, mean=mean, var=var, eps=eps, batch_stats=training,
                                   comm=comm if training else None)
