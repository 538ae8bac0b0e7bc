"""Chapter 3: convolution (im2col), average pooling and batch norm.

Every layer is compared with its ``torch.nn`` twin carrying the same weights
(copied through ``state_dict``, which also checks that the names and shapes
are PyTorch's): the output, the input gradient and every parameter gradient,
for the same random upstream gradient.

Agreement is measured as the relative error max|ours - torch| / max|torch|
and must stay below RTOL: 1e-8 in float64 and 1e-4 in float32. (Measured:
about 1e-15 and 1e-7; a real mistake, such as a patch read from the wrong
place, gives errors near 1.) If a comparison fails, the message names the
quantity; look at ``minclip/functional/conv.py``, ``pool.py`` or ``batchnorm.py``.
"""
import numpy as np
import pytest

from minclip import backend, nn
from minclip import functional as F
from minclip.gradcheck import gradcheck
from minclip.functional import conv
from minclip.functional.batchnorm import batch_statistics
from minclip.functional.conv import col2im, im2col
from minclip.tensor import Tensor
from support.compare import host, assert_allclose, assert_array_equal

RTOL = {"float64": 1e-8, "float32": 1e-4}


# ------------------------------------------------------------------ helpers

def torch_twin(torch, layer, torch_layer, dtype):
    """``torch_layer`` with the minclip layer's state (parameters and buffers), in ``dtype``."""
    torch_layer.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in layer.state_dict().items()})
    return torch_layer.to(getattr(torch, dtype))


def forward_backward(torch, layer, torch_layer, x, seed=1234):
    """Run x through both layers and back with the same random upstream gradient.

    Returns two dicts {quantity: NumPy array}: the output, the input
    gradient and each parameter's gradient, for minclip and for PyTorch.
    """
    ours_x = Tensor(x, requires_grad=True)
    theirs_x = torch.from_numpy(x.copy()).requires_grad_(True)
    out, reference = layer(ours_x), torch_layer(theirs_x)
    upstream = np.random.default_rng(seed).standard_normal(reference.shape).astype(x.dtype)
    out.backward(upstream)
    reference.backward(torch.from_numpy(upstream))
    ours = {"output": out.data, "input gradient": ours_x.grad}
    theirs = {"output": reference.detach().numpy(), "input gradient": theirs_x.grad.numpy()}
    for name, p in layer.named_parameters():
        ours[f"{name} gradient"] = p.grad
        theirs[f"{name} gradient"] = dict(torch_layer.named_parameters())[name].grad.numpy()
    return ours, theirs


def assert_matches(ours, theirs, dtype, where):
    for quantity, reference in theirs.items():
        value = host(ours[quantity])
        assert value.dtype == np.dtype(dtype), f"{where}: {quantity} is {value.dtype}, expected {dtype} (no upcast)"
        assert value.shape == reference.shape, f"{where}: {quantity} has shape {value.shape}, torch {reference.shape}"
        error = np.abs(value - reference).max() / max(np.abs(reference).max(), 1e-30)
        assert error < RTOL[dtype], (f"{where}: {quantity} differs from PyTorch by {error:.2e} (relative), "
                                     f"more than {RTOL[dtype]:.0e}")


def random(shape, dtype="float64", seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------ im2col

# (input shape, kernel, stride, padding, dilation), each a (height, width) pair
GEOMETRIES = [
    ((2, 3, 5, 5), (3, 3), (1, 1), (0, 0), (1, 1)),
    ((2, 3, 7, 6), (3, 3), (2, 2), (1, 1), (1, 1)),      # odd and non-square, stride 2
    ((1, 2, 8, 8), (4, 4), (4, 4), (0, 0), (1, 1)),      # patches that tile the image
    ((2, 2, 9, 7), (2, 3), (1, 2), (1, 0), (1, 1)),      # rectangular everything
    ((1, 2, 9, 9), (3, 3), (1, 1), (2, 2), (2, 2)),      # dilated
    ((2, 1, 10, 10), (2, 2), (3, 3), (0, 0), (1, 1)),    # stride > kernel: gaps between windows
]
GEOMETRY_IDS = ["3x3", "stride2-pad1", "tiles", "rectangular", "dilated", "gaps"]


@pytest.mark.exercise("3.1")
def test_im2col_columns_are_the_patches():
    """Column (n, y, x) of cols is the patch of image n whose top-left corner is at (y·s, x·s)."""
    x = np.arange(2 * 3 * 6 * 7, dtype="float64").reshape(2, 3, 6, 7)
    cols = im2col(x, (3, 3), (2, 2), (1, 1), (1, 1))
    assert cols.shape == (3 * 3 * 3, 2 * 3 * 4), f"im2col: expected cols (C·kh·kw, N·Ho·Wo) = (27, 24), got {cols.shape}"
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    column = cols.reshape(27, 2, 3, 4)[:, 1, 2, 3]                        # image 1, output row 2, column 3
    expected = padded[1, :, 4:7, 6:9].reshape(-1)                         # rows 2·2..+3, columns 3·2..+3
    assert_array_equal(column, expected, err_msg="im2col: column (n=1, y=2, x=3) is not that patch")


@pytest.mark.exercise("3.1")
@pytest.mark.parametrize("shape, kernel, stride, padding, dilation", GEOMETRIES, ids=GEOMETRY_IDS)
def test_im2col_matches_torch_unfold(torch, shape, kernel, stride, padding, dilation):
    """torch's unfold is im2col with the batch as a leading axis: (N, C·kh·kw, Ho·Wo)."""
    x = random(shape)
    cols = im2col(x, kernel, stride, padding, dilation)
    unfolded = torch.nn.functional.unfold(torch.from_numpy(x), kernel, dilation, padding, stride).numpy()
    expected = unfolded.transpose(1, 0, 2).reshape(cols.shape[0], -1)   # (C·kh·kw, N·Ho·Wo)
    assert_array_equal(cols, expected, err_msg="im2col differs from torch.nn.functional.unfold")


@pytest.mark.exercise("3.3")
@pytest.mark.parametrize("shape, kernel, stride, padding, dilation", GEOMETRIES, ids=GEOMETRY_IDS)
def test_col2im_is_the_adjoint_of_im2col(shape, kernel, stride, padding, dilation):
    """col2im is im2col's gradient, its adjoint: <im2col(x), c> = <x, col2im(c)> for every x and c."""
    x = random(shape)
    c = random(im2col(x, kernel, stride, padding, dilation).shape, seed=1)
    back = col2im(c, shape, kernel, stride, padding, dilation)
    assert back.shape == shape, f"col2im: expected the input shape {shape}, got {back.shape}"
    left, right = (im2col(x, kernel, stride, padding, dilation) * c).sum(), (x * back).sum()
    assert abs(left - right) < 1e-10 * abs(left), (
        f"<im2col(x), c> = {left:.12g} but <x, col2im(c)> = {right:.12g}: col2im must add every column "
        f"entry back onto the pixel im2col copied it from")


@pytest.mark.exercise("3.3")
def test_col2im_adds_up_overlapping_patches():
    """With a 3×3 kernel and stride 1, an interior pixel is in 9 patches, a corner pixel in 1."""
    ones = np.ones((9, 1 * 3 * 3))                                        # cols of a 5×5 image, no padding
    counts = col2im(ones, (1, 1, 5, 5), (3, 3), (1, 1), (0, 0), (1, 1))[0, 0]
    assert counts[2, 2] == 9 and counts[0, 0] == 1 and counts[0, 2] == 3, (
        f"col2im of all-ones columns should count how many patches hold each pixel, got\n{counts}")


# ------------------------------------------------------------------ Conv2d

# (N, C, H, W, out_channels, kernel, stride, padding, dilation, bias)
CONVOLUTIONS = [
    (1, 1, 5, 5, 1, 3, 1, 0, 1, True),
    (2, 3, 7, 9, 4, 3, 1, 1, 1, True),               # odd, non-square
    (3, 3, 8, 8, 5, 3, 2, 1, 1, False),              # the ResNet stem's 3×3, stride 2
    (2, 4, 9, 7, 6, 1, 1, 0, 1, False),              # 1×1 (bottleneck)
    (2, 4, 11, 11, 3, 5, 2, 2, 1, True),
    (4, 2, 6, 10, 3, (2, 3), (2, 1), (1, 0), 1, True),
    (2, 3, 12, 12, 8, 4, 4, 0, 1, False),            # ViT patch embedding: kernel = stride
    (2, 3, 13, 14, 8, 4, 4, 0, 1, False),            # ... with leftover rows and columns
    (5, 3, 10, 10, 2, 3, 3, 1, 1, True),             # kernel = stride, with padding
    (2, 2, 9, 9, 3, 3, 1, 2, 2, True),               # dilated
    (2, 3, 10, 10, 2, 2, 3, 0, 1, True),             # stride > kernel
]


def conv_pair(torch, case, dtype):
    N, C, H, W, out_channels, kernel, stride, padding, dilation, bias = case
    layer = nn.Conv2d(C, out_channels, kernel, stride, padding, dilation, bias=bias).to(dtype=dtype)
    twin = torch_twin(torch, layer, torch.nn.Conv2d(C, out_channels, kernel, stride, padding, dilation, bias=bias),
                      dtype)
    return layer, twin, random((N, C, H, W), dtype)


@pytest.mark.exercise("3.2")
@pytest.mark.parametrize("case", CONVOLUTIONS, ids=str)
def test_conv2d_forward_matches_torch(torch, case):
    layer, twin, x = conv_pair(torch, case, "float64")
    out = layer(Tensor(x)).numpy()
    expected = twin(torch.from_numpy(x)).detach().numpy()
    assert out.shape == expected.shape, f"{layer}: output shape {out.shape}, torch {expected.shape}"
    error = np.abs(out - expected).max() / np.abs(expected).max()
    assert error < RTOL["float64"], f"{layer}: output differs from torch.nn.Conv2d by {error:.2e} (relative)"


@pytest.mark.exercise("3.3")
@pytest.mark.parametrize("case", CONVOLUTIONS, ids=str)
def test_conv2d_gradients_match_torch(torch, case):
    layer, twin, x = conv_pair(torch, case, "float64")
    assert_matches(*forward_backward(torch, layer, twin, x), "float64", repr(layer))


@pytest.mark.exercise("3.3")
@pytest.mark.parametrize("case", [CONVOLUTIONS[2], CONVOLUTIONS[6]], ids=["stem", "patches"])
def test_conv2d_float32_stays_float32_and_matches_torch(torch, case):
    layer, twin, x = conv_pair(torch, case, "float32")
    assert_matches(*forward_backward(torch, layer, twin, x), "float32", repr(layer))


@pytest.mark.exercise("3.3")
@pytest.mark.parametrize("case", [CONVOLUTIONS[1], CONVOLUTIONS[7]], ids=["3x3", "patches"])
def test_conv2d_in_chunks_of_the_batch_matches_torch(torch, case, monkeypatch):
    """Large batches go through im2col a few images at a time (conv.CHUNK_BYTES): here one image at a time."""
    monkeypatch.setattr(conv, "CHUNK_BYTES", {"numpy": 1, "cupy": 1})
    layer, twin, x = conv_pair(torch, case, "float64")
    assert_matches(*forward_backward(torch, layer, twin, x), "float64", f"{layer} in chunks of one image")


@pytest.mark.exercise("3.3")
@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 0), (2, 1)])
def test_conv2d_gradcheck(stride, padding):
    """Backward against finite differences, for the input, the weight and the bias."""
    x, weight, bias = random((2, 2, 5, 6)), random((3, 2, 3, 3), seed=1), random((3,), seed=2)
    assert gradcheck(lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding), x, weight, bias)


def test_conv2d_parameters_are_pytorchs(torch):
    """Names, shapes and the U(-1/√fan_in, 1/√fan_in) initialization of torch.nn.Conv2d."""
    layer = nn.Conv2d(3, 8, 5, stride=2, padding=1)
    assert {k: v.shape for k, v in layer.state_dict().items()} == {
        k: tuple(v.shape) for k, v in torch.nn.Conv2d(3, 8, 5, stride=2, padding=1).state_dict().items()}
    bound = 1 / np.sqrt(3 * 5 * 5)
    for name, p in layer.named_parameters():
        assert p.dtype == np.float32, f"Conv2d.{name} is {p.dtype}, expected float32"
        # the largest of n draws passes 0.8·bound but with probability 0.8ⁿ (17% for the 8 biases)
        floor = 0.8 * bound if p.size > 100 else 0.3 * bound                 # 0.3⁸ ≈ 7e-5
        assert np.abs(host(p.data)).max() <= bound and np.abs(host(p.data)).max() > floor, (
            f"Conv2d.{name} should be drawn from U(-{bound:.3f}, {bound:.3f}), got max |value| {np.abs(host(p.data)).max():.3f}")
    assert nn.Conv2d(3, 8, 1, bias=False).bias is None


def test_conv2d_names_shapes_in_errors():
    with pytest.raises(ValueError, match=r"Conv2d\(3→64, k=3\): expected input \(N, 3, H, W\), got \(8, 4, 32, 32\)"):
        nn.Conv2d(3, 64, 3)(Tensor(np.zeros((8, 4, 32, 32), dtype="float32")))
    with pytest.raises(ValueError, match="smaller than the 3×3 kernel"):
        F.conv2d(Tensor(np.zeros((1, 1, 2, 2))), Tensor(np.zeros((1, 1, 3, 3))))


# ------------------------------------------------------------------ pooling

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kernel, stride, size", [(2, None, (8, 8)), (3, None, (9, 7)), (3, 2, (7, 8)), (2, 3, (8, 8))],
                         ids=["2x2", "3x3-odd", "overlapping", "gaps"])
def test_avg_pool2d_matches_torch(torch, dtype, kernel, stride, size):
    layer, twin = nn.AvgPool2d(kernel, stride), torch.nn.AvgPool2d(kernel, stride)
    x = random((2, 3) + size, dtype)
    assert_matches(*forward_backward(torch, layer, twin, x), dtype, repr(layer))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("output_size, size", [(1, (7, 7)), (2, (8, 6)), ((3, 2), (9, 8))])
def test_adaptive_avg_pool2d_matches_torch(torch, dtype, output_size, size):
    layer, twin = nn.AdaptiveAvgPool2d(output_size), torch.nn.AdaptiveAvgPool2d(output_size)
    x = random((2, 3) + size, dtype)
    assert_matches(*forward_backward(torch, layer, twin, x), dtype, repr(layer))


def test_avg_pool2d_gradcheck():
    assert gradcheck(lambda x: F.avg_pool2d(x, 3, 2), random((2, 2, 7, 6)))


def test_adaptive_avg_pool2d_refuses_sizes_that_do_not_divide():
    with pytest.raises(ValueError, match=r"cannot be split into 3×3 equal windows"):
        nn.AdaptiveAvgPool2d(3)(Tensor(np.zeros((1, 2, 8, 8), dtype="float32")))
    with pytest.raises(ValueError, match=r"AvgPool2d\(kernel_size=2, stride=2\): expected input \(N, C, H, W\)"):
        nn.AvgPool2d(2)(Tensor(np.zeros((2, 8, 8), dtype="float32")))


# ------------------------------------------------------------------ batch norm

def batch_norm_pair(torch, dtype, momentum=0.1):
    layer = nn.BatchNorm2d(3, momentum=momentum)
    layer.weight.data = backend.asarray(random(3, "float32", seed=5) + 1)                 # not the trivial 1 and 0
    layer.bias.data = backend.asarray(random(3, "float32", seed=6))
    layer.to(dtype=dtype)
    return layer, torch_twin(torch, layer, torch.nn.BatchNorm2d(3, momentum=momentum), dtype)


@pytest.mark.exercise("3.4")
def test_batch_statistics_and_running_update():
    x = random((4, 3, 5, 6)) * 2 + 1
    running_mean, running_var = np.full(3, 0.5), np.full(3, 2.0)
    mean, var = batch_statistics(x, running_mean, running_var, momentum=0.1)
    per_channel = x.transpose(1, 0, 2, 3).reshape(3, -1)                  # (C, N·H·W)
    assert_allclose(mean, per_channel.mean(axis=1), rtol=1e-12, err_msg="batch mean per channel")
    assert_allclose(var, per_channel.var(axis=1), rtol=1e-12,
                               err_msg="the variance used to normalize is the biased one (divided by n)")
    assert_allclose(running_mean, 0.9 * 0.5 + 0.1 * per_channel.mean(axis=1), rtol=1e-12,
                               err_msg="running_mean ← 0.9·running_mean + 0.1·mean, updated in place")
    assert_allclose(running_var, 0.9 * 2.0 + 0.1 * per_channel.var(axis=1, ddof=1), rtol=1e-12,
                               err_msg="running_var ← 0.9·running_var + 0.1·unbiased var (divided by n - 1), in place")


@pytest.mark.exercise("3.4")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batch_norm_training_matches_torch(torch, dtype):
    """Batch statistics in training: output and gradients, and the running estimates after three batches."""
    layer, twin = batch_norm_pair(torch, dtype)
    for step in range(3):
        x = random((4, 3, 5, 7), dtype, seed=step) * 3 + 2
        assert_matches(*forward_backward(torch, layer, twin, x), dtype, f"{layer}, training step {step}")
    for name, reference in twin.state_dict().items():
        value = getattr(layer, name).data if name in ("weight", "bias") else getattr(layer, name)
        assert_allclose(value, reference.numpy(), rtol=RTOL[dtype],
                                   err_msg=f"BatchNorm2d.{name} after 3 training steps differs from PyTorch's")
    assert layer.num_batches_tracked.dtype == np.int64 and int(layer.num_batches_tracked) == 3


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batch_norm_eval_uses_running_statistics(torch, dtype):
    layer, twin = batch_norm_pair(torch, dtype)
    for step in range(2):                                                # move the running statistics first
        layer(Tensor(random((4, 3, 5, 5), dtype, seed=step) * 2 + 1))
        twin(torch.from_numpy(random((4, 3, 5, 5), dtype, seed=step) * 2 + 1))
    layer.eval(), twin.eval()
    assert_matches(*forward_backward(torch, layer, twin, random((2, 3, 4, 5), dtype, seed=9)), dtype, f"{layer}, eval")
    assert int(layer.num_batches_tracked) == 2, "eval mode must not count batches"


def test_batch_norm_cumulative_average_when_momentum_is_none(torch):
    layer, twin = batch_norm_pair(torch, "float64", momentum=None)
    for step in range(3):
        x = random((2, 3, 4, 4), seed=step) + step
        layer(Tensor(x)), twin(torch.from_numpy(x))
    assert_allclose(layer.running_mean, twin.running_mean.numpy(), rtol=1e-12)
    assert_allclose(layer.running_var, twin.running_var.numpy(), rtol=1e-12)


@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
def test_batch_norm_gradcheck(training):
    running_mean, running_var = backend.asarray(np.zeros(3)), backend.asarray(np.ones(3))
    x, weight, bias = random((2, 3, 3, 4)), random(3, seed=1), random(3, seed=2)
    assert gradcheck(lambda x, w, b: F.batch_norm(x, running_mean, running_var, w, b, training=training),
                     x, weight, bias)


def test_batch_norm_state_dict_is_pytorchs(torch):
    layer = nn.BatchNorm2d(4)
    reference = torch.nn.BatchNorm2d(4).state_dict()
    assert list(layer.state_dict()) == list(reference)
    for name, value in layer.state_dict().items():
        assert value.shape == tuple(reference[name].shape), f"BatchNorm2d.{name}: {value.shape}, torch {tuple(reference[name].shape)}"
        assert str(value.dtype) == str(reference[name].dtype).replace("torch.", ""), f"BatchNorm2d.{name}: {value.dtype}"


def test_batch_norm_names_shapes_in_errors():
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3, .*\): expected input \(N, 3, H, W\), got \(2, 4, 5, 5\)"):
        nn.BatchNorm2d(3)(Tensor(np.zeros((2, 4, 5, 5), dtype="float32")))
    with pytest.raises(ValueError, match="more than one value per channel"):
        nn.BatchNorm2d(3)(Tensor(np.zeros((1, 3, 1, 1), dtype="float32")))
