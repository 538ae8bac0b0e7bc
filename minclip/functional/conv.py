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

Two fast paths sit beside these formulas (``backend.plain_paths()`` turns
them off, and tests/test_fast_conv.py checks that they agree): a 1×1
convolution on a large map as one product per image, without im2col
(``one_product_per_image``), and the input gradient of a stride-1
convolution as a convolution of g, without col2im (``Conv2dFunction``).
"""

from minclip.backend import array_module, backend_name, fast_paths, sliding_window_view
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

# Fast path 1: a 1×1 convolution (stride 1, no padding) is W (O, C) @ x_n (C, H·W) for each
# image n: im2col would only transpose x to (C, N·H·W), and the product's (O, N·H·W) result
# would be transposed back. One batched product per image skips both copies. It pays from
# about this many pixels per image; on smaller maps the per-image products are too small to
# run at full speed (measured on 2 cores: RN50's 56×56 1×1 convs 10.9 -> 5.7 ms, 14×14
# 5.3 -> 4.5 ms; 7×7 4.9 -> 5.7 ms and 2×2 1.9 -> 5.9 ms, slower).
PER_IMAGE_MIN_PIXELS = 100


def batch_chunks(x, weight_shape, geometry):
    """Slices of x's batch whose im2col columns take about CHUNK_BYTES each (at least one image)."""
    (N, _, H, W), (_, C, kh, kw) = x.shape, weight_shape
    Ho, Wo = conv_output_shape((H, W), (kh, kw), *geometry)
    step = max(1, CHUNK_BYTES[backend_name(x)] // (C * kh * kw * Ho * Wo * x.itemsize))
    return [slice(start, start + step) for start in range(0, N, step)]


def one_product_per_image(x, weight, stride, padding):
    """Whether fast path 1 applies: a 1×1 kernel, stride 1, no padding, a large enough map."""
    return (fast_paths() and weight.shape[2:] == (1, 1) and stride == (1, 1) and padding == (0, 0)
            and x.shape[2] * x.shape[3] >= PER_IMAGE_MIN_PIXELS)


def convolve(x, weight, stride, padding, dilation):
    """x (N, C, H, W) ⋆ weight (O, C, kh, kw), no bias -> (N, O, Ho, Wo): ``conv2d_as_matmul``
    on chunks of the batch, or fast path 1."""
    lib, geometry = array_module(x), (stride, padding, dilation)
    if one_product_per_image(x, weight, stride, padding):
        (N, C, H, W), O = x.shape, weight.shape[0]
        return lib.matmul(weight.reshape(O, C), x.reshape(N, C, H * W)).reshape(N, O, H, W)
    return lib.concatenate([conv2d_as_matmul(x[batch], weight, *geometry)
                            for batch in batch_chunks(x, weight.shape, geometry)])


def input_gradient_is_a_convolution(kernel_size, stride, padding, dilation):
    """Whether fast path 2 applies: stride 1, and padding p ≤ d·(k - 1) on both axes."""
    return fast_paths() and stride == (1, 1) and all(
        p <= d * (k - 1) for k, p, d in zip(kernel_size, padding, dilation))


class Conv2dFunction(Function):
    """out = W @ im2col(x) + b, as (N, O, Ho, Wo); see the module docstring for the backward.

    Backward recomputes the columns from the saved input instead of keeping
    them from forward (as PyTorch does): the input is kept alive anyway, and
    its columns are kh·kw times larger.

    Fast path 2 (outside ``backend.plain_paths()``): with stride 1, the input
    gradient is itself a convolution, of g with the kernel flipped in space
    and its in/out channels swapped, padded by d·(k - 1) - p:

        dx[c, y, x] = Σ_{o,i,j} W[o, c, i, j] · g[o, y + p - i·d, x + p - j·d]

    That is im2col of g and one product, where the plain way is one product
    with a (C·kh·kw, N·Ho·Wo) result and col2im's kh·kw strided additions.
    Measured, the input gradient alone on 2 cores: 0.6-0.9 of the plain time
    on the ResNet tower's 3×3 layers (64 channels on 16×16 maps, batch 64:
    17.3 -> 15.7 ms; 256 channels on 4×4 maps: 18.9 -> 12.6 ms).
    """

    def forward(self, x, weight, bias=None, *, stride, padding, dilation):
        self.x, self.weight, self.geometry = x, weight, (stride, padding, dilation)
        out = convolve(x, weight, stride, padding, dilation)                # (N, O, Ho, Wo), contiguous
        if bias is not None:
            out += bias.reshape(1, -1, 1, 1)
        return out

    def backward(self, g):
        gx = self.input_gradient(g) if self.needs_grad[0] else None
        gw = self.weight_gradient(g) if self.needs_grad[1] else None
        gb = g.sum(axis=(0, 2, 3)) if len(self.needs_grad) > 2 and self.needs_grad[2] else None
        return gx, gw, gb

    def input_gradient(self, g):
        """dx = col2im(Wᵀ g), chunk by chunk, with g as (O, n·Ho·Wo); or fast path 2."""
        x, weight, (stride, padding, dilation) = self.x, self.weight, self.geometry
        O, kernel_size = weight.shape[0], weight.shape[2:]
        if input_gradient_is_a_convolution(kernel_size, stride, padding, dilation):
            flipped = weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)        # (C, O, kh, kw)
            pad = tuple(d * (k - 1) - p for k, p, d in zip(kernel_size, padding, dilation))
            return convolve(g, flipped, stride, pad, dilation)              # (N, C, H, W)
        w = weight.reshape(O, -1)                                          # (O, C·kh·kw)
        gx = array_module(g).empty_like(x)
        for batch in batch_chunks(x, weight.shape, self.geometry):
            g2 = g[batch].transpose(1, 0, 2, 3).reshape(O, -1)             # (O, n·Ho·Wo)
            gx[batch] = col2im(w.T @ g2, x[batch].shape, kernel_size, stride, padding, dilation)
        return gx

    def weight_gradient(self, g):
        """dW = Σ over chunks of g colsᵀ, with g as (O, n·Ho·Wo) and cols = im2col(x) of the chunk."""
        x, weight, geometry = self.x, self.weight, self.geometry
        O = weight.shape[0]
        gw = array_module(g).zeros((O, weight[0].size), dtype=weight.dtype)  # (O, C·kh·kw)
        for batch in batch_chunks(x, weight.shape, geometry):
            g2 = g[batch].transpose(1, 0, 2, 3).reshape(O, -1)             # (O, n·Ho·Wo)
            gw += g2 @ im2col(x[batch], weight.shape[2:], *geometry).T
        return gw.reshape(weight.shape)


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
