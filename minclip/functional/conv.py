"""``conv2d``: a 2-D convolution as one matrix product (im2col).

A convolution slides each (C, kh, kw) filter over the image and takes a dot
product at every position. Copy every patch of every image into one column
of a matrix ("im2col"),

    cols[(c, i, j), (n, y, x)] = x_pad[n, c, y·s + i·d, x·s + j·d]      # (C·kh·kw, N·Ho·Wo)

and all filters at all positions of the whole batch become one product:

    out = W.reshape(O, C·kh·kw) @ cols                                  # (O, N·Ho·Wo)

with s the stride, d the dilation, p the padding and
Ho = ⌊(H + 2p - d·(kh - 1) - 1) / s⌋ + 1 (Wo likewise). The backward is two
more products and the reverse of im2col:

    dW = g @ colsᵀ,    dcols = Wᵀ @ g,    dx = col2im(dcols)

where col2im adds each column entry back onto the pixel it was copied from
(a pixel inside several patches, when the kernel is larger than the stride,
receives the sum). Putting the batch inside the columns (rather than one
product per image) makes all three products single large matrix products
(per chunk of images, to keep the columns to a few MB: see CHUNK_BYTES).
"""

from minclip.backend import array_module, backend_name, sliding_window_view
from minclip.tensor import Function


def as_pair(value):
    """3 -> (3, 3); (3, 5) stays (3, 5)."""
    return (value, value) if isinstance(value, int) else tuple(value)


def conv_output_shape(size, kernel_size, stride, padding, dilation):
    """(Ho, Wo): how many positions a window of kh×kw taps (``dilation`` apart), moving by
    ``stride``, fits into an input of ``size`` (H, W) padded by ``padding`` on every side.
    Every argument is a (height, width) pair; the one place this formula is written."""
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                 for n, k, s, p, d in zip(size, kernel_size, stride, padding, dilation))


def im2col(x, kernel_size, stride, padding, dilation):
    """Copy every (C, kh, kw) patch of x (N, C, H, W) into a column: cols (C·kh·kw, N·Ho·Wo).

    Row (c, i, j) of cols holds pixel (c, i·d, j·d) of every patch; column
    (n, y, x) is the patch whose top-left corner is at (y·s, x·s) of image n
    after zero padding. All arguments after x are (height, width) pairs.
    """
    # BEGIN EXERCISE 3.1: im2col, every patch as a column
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    N, C = x.shape[:2]
    if ph or pw:
        x = array_module(x).pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))   # (N, C, H + 2p, W + 2p)
    span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)                          # a dilated window's extent
    windows = sliding_window_view(x, span, axis=(2, 3))                   # (N, C, H', W', span_h, span_w), a view
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]                       # (N, C, Ho, Wo, kh, kw), still a view
    Ho, Wo = windows.shape[2:4]
    cols = array_module(x).ascontiguousarray(windows.transpose(1, 4, 5, 0, 2, 3))  # (C, kh, kw, N, Ho, Wo): the copy
    return cols.reshape(C * kh * kw, N * Ho * Wo)
    # END EXERCISE


def col2im(cols, input_shape, kernel_size, stride, padding, dilation):
    """The reverse of im2col: add each entry of cols (C·kh·kw, N·Ho·Wo) back onto
    the pixel of the (N, C, H, W) input it was copied from.

    This is the input gradient of im2col (its adjoint): a pixel that sat in
    several patches receives the sum of their gradients. Two cases:

    * windows that tile the input without overlap (stride = kernel, no
      dilation, as in a ViT's patch embedding or a 2×2 average pool): each
      pixel was copied at most once, so col2im is a transpose and a reshape;
    * otherwise, loop over the kh·kw kernel offsets (i, j): the entries of
      offset (i, j) at all N·Ho·Wo positions land on one strided slice of the
      padded input, so each offset is one vectorized slice addition. (This is
      some 25× faster than a scatter-add of every entry with
      ``backend.scatter_add`` for a 3×3 convolution on 32×32 images.)

    The sums are kept in cols' own order, (C, N, H, W), so each addition walks
    both arrays in the same direction; the result, without the padding, is
    returned as an (N, C, H, W) view of them.
    """
    # BEGIN EXERCISE 3.3: col2im, the input gradient of im2col
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    N, C, H, W = input_shape
    Ho, Wo = conv_output_shape((H, W), kernel_size, stride, padding, dilation)
    cols = cols.reshape(C, kh, kw, N, Ho, Wo)
    grad = array_module(cols).zeros((C, N, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)  # (C, N, ...): cols' order
    if (sh, sw) == (kh, kw) and (dh, dw) == (1, 1):
        tiles = cols.transpose(0, 3, 4, 1, 5, 2)                            # (C, N, Ho, kh, Wo, kw)
        grad[:, :, :Ho * kh, :Wo * kw] = tiles.reshape(C, N, Ho * kh, Wo * kw)
    else:
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dh, i * dh + sh * Ho, sh)                 # the Ho rows offset i touches
                columns = slice(j * dw, j * dw + sw * Wo, sw)
                grad[:, :, rows, columns] += cols[:, i, j]                 # (C, N, Ho, Wo)
    return grad[:, :, ph:ph + H, pw:pw + W].transpose(1, 0, 2, 3)          # (N, C, H, W)
    # END EXERCISE


def conv2d_as_matmul(x, weight, stride, padding, dilation):
    """The convolution of x (N, C, H, W) with weight (O, C, kh, kw) as one
    matrix product: W.reshape(O, C·kh·kw) @ im2col(x) -> (N, O, Ho, Wo).
    """
    # BEGIN EXERCISE 3.2: convolution as one matrix product
    N, _, H, W = x.shape
    O, _, kh, kw = weight.shape
    Ho, Wo = conv_output_shape((H, W), (kh, kw), stride, padding, dilation)
    cols = im2col(x, (kh, kw), stride, padding, dilation)                  # (C·kh·kw, N·Ho·Wo)
    out = weight.reshape(O, -1) @ cols                                     # (O, N·Ho·Wo): the one product
    return out.reshape(O, N, Ho, Wo).transpose(1, 0, 2, 3)                 # (N, O, Ho, Wo)
    # END EXERCISE


# The batch goes through im2col in chunks of images whose columns take about
# this many bytes: a buffer that size is reused by the memory allocator and
# stays mostly in cache, where columns for a whole batch (hundreds of MB for a
# ResNet layer) would be fresh memory, paged in at every call. Measured for a
# 3×3 layer, 64 channels, 32 images of 32×32, forward + backward on 2 cores:
# 86 ms in chunks of 16 MB against 134 ms in one piece (best of 25 runs).
# On a GPU the cost is the other way round: each chunk is a handful of kernel
# launches, and memory is plentiful, so the whole batch goes in one piece
# unless its columns pass 4 GB (RN50 at batch 128 needs under 1 GB).
CHUNK_BYTES = {"numpy": 16 * 2**20, "cupy": 4 * 2**30}


class Conv2dFunction(Function):
    """out = W @ im2col(x) + b, as (N, O, Ho, Wo); see the module docstring for the backward.

    Backward recomputes the columns from the saved input instead of keeping
    them from forward (as PyTorch does): the input is kept alive anyway, and
    its columns are kh·kw times larger.
    """

    def forward(self, x, weight, bias=None, *, stride, padding, dilation):
        self.x, self.weight, self.geometry = x, weight, (stride, padding, dilation)
        lib = array_module(x)
        out = lib.concatenate([conv2d_as_matmul(x[batch], weight, stride, padding, dilation)
                              for batch in self._chunks()])                # (N, O, Ho, Wo), contiguous
        if bias is not None:
            out += bias.reshape(1, -1, 1, 1)
        return out

    def backward(self, g):
        """Chunk by chunk, with g as (O, n·Ho·Wo): dW += g colsᵀ and dx = col2im(Wᵀ g); db = Σ g."""
        x, weight, geometry = self.x, self.weight, self.geometry
        lib = array_module(g)
        O, kernel_size = weight.shape[0], weight.shape[2:]
        w = weight.reshape(O, -1)                                          # (O, C·kh·kw)
        gx = lib.empty_like(x) if self.needs_grad[0] else None
        gw = lib.zeros_like(w) if self.needs_grad[1] else None
        for batch in self._chunks():
            g2 = g[batch].transpose(1, 0, 2, 3).reshape(O, -1)             # (O, n·Ho·Wo)
            if gx is not None:
                gx[batch] = col2im(w.T @ g2, x[batch].shape, kernel_size, *geometry)
            if gw is not None:
                gw += g2 @ im2col(x[batch], kernel_size, *geometry).T       # (O, C·kh·kw)
        gb = g.sum(axis=(0, 2, 3)) if len(self.needs_grad) > 2 and self.needs_grad[2] else None
        return gx, None if gw is None else gw.reshape(weight.shape), gb

    def _chunks(self):
        """Slices of the batch whose columns take about CHUNK_BYTES each (at least one image)."""
        budget = CHUNK_BYTES[backend_name(self.x)]
        (N, _, H, W), (_, C, kh, kw) = self.x.shape, self.weight.shape
        Ho, Wo = conv_output_shape((H, W), (kh, kw), *self.geometry)
        step = max(1, budget // (C * kh * kw * Ho * Wo * self.x.itemsize))
        return [slice(start, start + step) for start in range(0, N, step)]


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """2-D convolution (cross-correlation, as in every deep-learning library).

    x (N, C, H, W), weight (O, C, kh, kw), optional bias (O,) -> (N, O, Ho, Wo).
    ``stride``, ``padding`` (zeros on every side) and ``dilation`` (the gap
    between kernel taps) are ints or (height, width) pairs.
    """
    stride, padding, dilation = as_pair(stride), as_pair(padding), as_pair(dilation)
    if x.ndim != 4 or weight.ndim != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"conv2d: expected input (N, C, H, W) and weight (O, C, kh, kw) with the same C, "
                         f"got input {x.shape} and weight {weight.shape}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"conv2d: expected bias ({weight.shape[0]},) for weight {weight.shape}, got {bias.shape}")
    if min(conv_output_shape(x.shape[2:], weight.shape[2:], stride, padding, dilation)) < 1:
        raise ValueError(f"conv2d: input {x.shape[2]}×{x.shape[3]} with padding {padding} is smaller than "
                         f"the {weight.shape[2]}×{weight.shape[3]} kernel (dilation {dilation})")
    inputs = (x, weight) if bias is None else (x, weight, bias)
    return Conv2dFunction.apply(*inputs, stride=stride, padding=padding, dilation=dilation)
