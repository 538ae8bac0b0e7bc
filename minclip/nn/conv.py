"""``Conv2d``: the layer that holds a convolution's weight and bias; the maths is ``F.conv2d``."""
import math

from minclip import functional as F
from minclip.backend import xp
from minclip.functional.conv import as_pair
from minclip.nn import init
from minclip.nn.module import Module, Parameter


class Conv2d(Module):
    """A 2-D convolution layer: weight (out_channels, in_channels, kh, kw), optional bias (out_channels,).

    Initialized as PyTorch does: weight and bias ~ U(-1/√fan_in, 1/√fan_in)
    with fan_in = in_channels·kh·kw.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = as_pair(kernel_size), as_pair(stride)
        self.padding, self.dilation = as_pair(padding), as_pair(dilation)
        shape = (out_channels, in_channels) + self.kernel_size
        self.weight = init.kaiming_uniform_default_(Parameter(xp.empty(shape, dtype="float32")))
        bound = 1.0 / math.sqrt(in_channels * self.kernel_size[0] * self.kernel_size[1])
        self.bias = init.uniform_(Parameter(xp.empty(out_channels, dtype="float32")), -bound, bound) if bias else None

    def forward(self, x):
        self.check_input(x, 4, (self.in_channels, None, None), f"(N, {self.in_channels}, H, W)")
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self):
        kh, kw = self.kernel_size
        text = f"{self.in_channels}→{self.out_channels}, k={kh if kh == kw else self.kernel_size}"
        for name, default in (("stride", (1, 1)), ("padding", (0, 0)), ("dilation", (1, 1))):
            value = getattr(self, name)
            if value != default:
                text += f", {name}={value[0] if value[0] == value[1] else value}"
        return text + ("" if self.bias is not None else ", bias=False")
